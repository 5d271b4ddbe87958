"""What each method declares it does to the decoder layers (``Method.schedule``) against what its prefill records
(``stats["layer_tokens"]`` / ``stats["layer_kv_tokens"]``), and the FLOPs and ideal speed-ups that follow from them."""
import json

import pytest
import torch

import prunevid
from prunevid import methods, models, state, video
from prunevid.harness import bench, flops
from prunevid.harness.cli import main

ARCHS = ["tiny", "tiny-llava-next-video", "tiny-pllava", "tiny-qwen2.5-vl"]
# settings that make every method act on a 4-layer tiny model at 8 frames (Look-M without a budget keeps a count
# that depends on the text prior: the schedule is then given the recorded count)
PARAMS = {"prunevid": {}, "fastv": {}, "lookm": {"retain": 0.25}, "dycoke": {}, "random": {}, "visionzip": {},
          "vidcom2": {}, "prumerge": {}, "prumerge+": {}, "oracle": {}, "none": {}, "pdrop": {}, "divprune": {},
          "fastvid": {}, "holitom": {}, "framefusion": {}}


@pytest.fixture(scope="module", params=ARCHS)
def arch(request):
    loaded = models.load(request.param)
    frames = video.load_video(video.sample_clip("bikes"), 8)
    return loaded, video.build_inputs(loaded, frames, "What happens in the video?")


def test_every_method_is_in_the_table():
    assert set(PARAMS) == set(methods.available())


@pytest.mark.parametrize("method", sorted(PARAMS))
def test_declared_schedule_equals_the_recorded_prefill(arch, method):
    loaded, inputs = arch
    model = loaded.model
    if method == "oracle":                # its hint: object masks, one per frame the model sees (Qwen merges pairs)
        masks = torch.zeros(_frames_seen(model, inputs), 64, 64)
        masks[:, 16:40, 8:32] = 1.0
    prunevid.apply(model, method=method, **PARAMS[method])
    if method == "oracle":
        state.set_hints(model, object_masks=masks)
    impl = state.active_method(model)
    if impl.needs_vision_attention and loaded.name.startswith("tiny-qwen"):
        prunevid.remove(model)
        pytest.skip("the kit does not extract Qwen2-VL's vision attention (a documented limit)")
    try:
        with torch.no_grad():
            model(**inputs, use_cache=True)
        st = prunevid.stats(model)
        info = prunevid.patch.info(model)
    finally:
        prunevid.remove(model)
    n_layers = len(loaded.spec.module.language_layers(model))
    assert len(st["layer_tokens"]) == len(st["layer_kv_tokens"]) == n_layers
    assert st["layer_kv_tokens"][-1] == st["kv_visual_tokens"]
    # the counts a video decides are given from the record's summary; the layer pattern is the method's
    kept = st["kv_visual_tokens"] if method == "lookm" else st["visual_tokens_stage2"]
    # FrameFusion: the count of each step of its cascade is the video's (given from the record)
    extra = {"steps": info["framefusion"]["steps"]} if method == "framefusion" else {}
    sched = impl.schedule(n_layers, st["text_tokens"], st["visual_tokens_in"], entering=st["visual_tokens_stage1"],
                          kept=kept, **extra)
    assert sched.tokens == st["layer_tokens"], (method, sched.tokens, st["layer_tokens"])
    assert sched.kv == st["layer_kv_tokens"], (method, sched.kv, st["layer_kv_tokens"])
    if method in ("fastv", "lookm", "random", "oracle", "none", "pdrop", "divprune"):   # settings fix the counts
        alone = impl.schedule(n_layers, st["text_tokens"], st["visual_tokens_in"])
        if method not in ("random", "oracle"):              # a retain budget's analytic count is retain x n, not floor
            assert (alone.tokens, alone.kv) == (st["layer_tokens"], st["layer_kv_tokens"]), method


def _frames_seen(model, inputs) -> int:
    """The frames the method sees (the rows of random keep's kept map), for giving the oracle its masks."""
    prunevid.apply(model, method="random")
    try:
        with torch.no_grad():
            model(**inputs)
        return int(methods.kept_map(model).shape[0])
    finally:
        prunevid.remove(model)


# ------------------------------------------------------------------------------- FastV's ideal speed-up, by hand
def _tiny_layer_macs(n):
    """One decoder layer of the tiny LLaVA-OneVision LLM (d 64, 4 heads of 16, 2 KV heads, SwiGLU m 128), worked
    out by hand: q/o 2 n 64 64 + k/v 2 n 64 32 + attention 2 x 4 x 16 n^2 + FFN 3 n 64 128 = 36864 n + 128 n^2."""
    return 36864 * n + 128 * n * n


def test_fastv_ideal_speedup_from_the_declared_schedule_by_hand():
    shape = flops.LLMShape.from_config(models.load("tiny").model.config)
    assert (shape.hidden, shape.layers, shape.heads, shape.kv, shape.hd, shape.ffn) == (64, 4, 4, 2, 16, 128)
    full, kept = _tiny_layer_macs(420), _tiny_layer_macs(220)          # 400 visual + 20 text; R 0.5 keeps 200
    assert (full, kept) == (38_062_080, 14_305_280)
    for params, k in (({}, 2), ({"K": 2}, 2), ({"K": 1}, 1)):          # no K: FastV's own, 2 (was 1.0x before)
        res = flops.analytic_ratio(shape, "fastv", 400, n_text=20, formula="exact", params=params)
        hand = 4 * full / (k * full + (4 - k) * kept)
        assert 1 / res["flops_ratio"] == pytest.approx(hand, rel=1e-12), params
    assert 4 * full / (2 * full + 2 * kept) == pytest.approx(1.453657, abs=1e-6)   # 152248320 / 104734720


def test_fastv_ideal_speedup_of_a_prefill_by_hand(arch):
    loaded, inputs = arch
    if loaded.name != "tiny":
        pytest.skip("worked out for the tiny LLaVA-OneVision shape")
    model = loaded.model
    shape = flops.LLMShape.from_config(model.config)
    for params, k in (({}, 2), ({"K": 1}, 1)):
        prunevid.apply(model, method="fastv", **params)
        with torch.no_grad():
            model(**inputs)
        st = prunevid.stats(model)
        prunevid.remove(model)
        n_all, n_kept, text = st["visual_tokens_in"], st["visual_tokens_stage2"], st["text_tokens"]
        assert n_kept == n_all // 2                                    # floor((1 - 0.5) n)
        full, cut = _tiny_layer_macs(n_all + text), _tiny_layer_macs(n_kept + text)
        assert bench.ideal_speedup(shape, st) == pytest.approx(4 * full / (k * full + (4 - k) * cut), rel=1e-12)


def test_fastv_ideal_from_the_flops_command_by_hand(capsys):
    """``python -m prunevid flops --preset llava-ov-7b --method fastv --retained 0.3``: the exact formula on
    LLaVA-OneVision-7B's LLM (d 3584, 28 layers, 28 heads of 128, 4 KV heads, SwiGLU m 18944), 32 x 196 visual."""
    def layer(n):
        return 2 * n * 3584 * 28 * 128 + 2 * n * 3584 * 4 * 128 + 2 * 28 * 128 * n * n + 3 * n * 3584 * 18944
    n = 32 * 196
    for argv, k in (([], 2), (["--fastv-k", "3"], 3)):
        assert main(["flops", "--preset", "llava-ov-7b", "--method", "fastv", "--retained", "0.3", "--json", *argv]) == 0
        out = json.loads(capsys.readouterr().out)
        hand = 28 * layer(n) / (k * layer(n) + (28 - k) * layer(0.3 * n))
        assert 1 / out["flops_ratio_exact"] == pytest.approx(hand, rel=1e-12), argv
