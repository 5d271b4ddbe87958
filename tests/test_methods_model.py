"""Every method on the tiny LLaVA-OneVision: no-op = bit-identical, defaults prune the documented amount,
generate works and agrees with the forward, remove restores, stats keys are filled."""
import pytest
import torch

import prunevid
from prunevid.methods.base import Method
from prunevid.methods.none import NoneConfig
from prunevid.prune import count_for_ratio

from conftest import FRAMES, apply_with_hints, run_patched

P = 49                      # tokens per frame of the tiny model
N_IN = FRAMES * P

# method -> (default-ish params for the 4-layer tiny model, no-op params)
CASES = {
    "prunevid": ({"selected_layer": 1}, {"stage1": False, "stage2": False}),
    "random": ({}, {"retain": 1.0}),
    "fastv": ({}, {"R": 0.0}),
    "visionzip": ({}, {"retain": 1.0}),
    "dycoke": ({"L": 1}, {"K": 0.0, "P": 0.0}),
    "vidcom2": ({}, {"retain": 1.0}),
    "prumerge": ({}, None),                       # adaptive: no no-op setting
    "prumerge+": ({}, {"retain": 1.0, "k_neighbors": 0, "summary_token": False}),
    "lookm": ({}, {"hh_ratio": 0.5, "recent_ratio": 0.5}),
    "oracle": ({}, {"retain": 1.0}),
    "pdrop": ({}, {"lam": 1.0}),
    "divprune": ({}, {"retain": 1.0}),
    "fastvid": ({"retain": 0.25}, {"retain": 1.0}),
    "holitom": ({}, {"ratio": 1.0, "inner_ratio": 0.0}),
    "framefusion": ({}, {"cost": 1.0}),
    "none": ({}, {}),
}
FILLED = ("visual_tokens_in", "visual_tokens_stage1", "visual_tokens_stage2", "kv_visual_tokens", "text_tokens",
          "retained_ratio_stage1", "retained_ratio")


def _hint_masks(frames=FRAMES):
    """Object masks for a method that reads them (``oracle``): a square moving across the 112 px frames."""
    m = torch.zeros(frames, 112, 112)
    for t in range(frames):
        m[t, 40:72, 8 * t:8 * t + 32] = 1.0
    return m


def _apply(model, method, params):
    """``prunevid.apply`` plus the hints the method reads (``Method.needs_hints``)."""
    apply_with_hints(model, method, {"object_masks": _hint_masks()}, **params)


def _run(model, inputs, method, params):
    return run_patched(model, inputs, method, {"object_masks": _hint_masks()}, **params)


def test_registry_lists_every_method():
    assert set(prunevid.methods.available()) == set(CASES)
    for name in CASES:
        assert prunevid.methods.config_class(name)() is not None or name == "prunevid"


@pytest.mark.parametrize("method", [m for m, (_, noop) in CASES.items() if noop is not None])
def test_noop_settings_bit_identical(tiny, tiny_inputs, tiny_ref, method):
    model, _ = tiny
    logits, stats, _ = _run(model, tiny_inputs, method, CASES[method][1])
    assert torch.equal(logits, tiny_ref)
    assert stats["visual_tokens_stage2"] == stats["visual_tokens_in"] == N_IN


class _AlwaysOn(Method):
    """Enabled, but keeps every token: exercises the whole patched prefill path."""
    name = "always-on"
    config_class = NoneConfig

    @property
    def enabled(self):
        return True


def test_patched_path_keeping_everything_is_bit_identical(tiny, tiny_inputs, tiny_ref):
    model, _ = tiny
    prunevid.apply(model, method="none")
    prunevid.state.get(model).impl = _AlwaysOn(NoneConfig())
    try:
        with torch.no_grad():
            logits = model(**tiny_inputs).logits
    finally:
        prunevid.remove(model)
    assert torch.equal(logits, tiny_ref)


@pytest.mark.parametrize("method", [m for m in CASES if m != "none"])
def test_defaults_prune_documented_amount(tiny, tiny_inputs, tiny_ref, method):
    model, _ = tiny
    logits, st, info = _run(model, tiny_inputs, method, CASES[method][0])
    for key in FILLED:
        assert st[key] is not None, key
    assert st["visual_tokens_in"] == N_IN
    assert st["retained_ratio"] == st["visual_tokens_stage2"] / N_IN
    s1, s2, kv = st["visual_tokens_stage1"], st["visual_tokens_stage2"], st["kv_visual_tokens"]
    if method in ("random", "oracle"):
        assert s1 == s2 == kv == count_for_ratio(0.25, N_IN)
    elif method == "fastv":                     # K=2, R=0.5: half the visual tokens after layer 1
        assert s1 == N_IN and s2 == kv == N_IN // 2
    elif method == "visionzip":                 # floor(0.25 * 49) = 12 per frame: 10 dominant + 2 contextual
        assert s1 == s2 == FRAMES * 12
        assert (info["dominant_per_frame"], info["contextual_per_frame"]) == (10, 2)
    elif method == "dycoke":                    # frames 0, 4, 6 whole + 5 compared frames x int(0.3 * 49)
        assert s1 == s2 == 3 * P + 5 * 14
    elif method == "vidcom2":
        assert s1 == sum(info["tokens_per_frame"])
        assert abs(s1 - 0.25 * N_IN) <= FRAMES
    elif method == "prumerge":                  # IQR outliers + one summary token per frame
        assert s1 == sum(info["kept_per_frame"]) + FRAMES
    elif method == "prumerge+":                 # outliers + upstream's stride samples + one summary token per frame
        for kept, r in zip(info["kept_per_frame"], info["outlier_ratio_per_frame"]):
            samples = len(range(0, P - 1, max(1, int(int(1 / r) / 3)))) if r > 0 else 1
            assert samples <= kept <= samples + int(P * r)
        assert s1 == sum(info["kept_per_frame"]) + FRAMES
    elif method == "lookm":                     # prefill untouched; the cache keeps hh + recent = 2 int(0.1 N)
        n = tiny_inputs["input_ids"].shape[1]   # entries of the whole sequence (upstream's ratios_of="sequence")
        first = int((tiny_inputs["input_ids"][0] == model.config.video_token_index).nonzero()[0])
        after = n - first - N_IN                # text after the video (newline included), inside the window
        hh = recent = int(0.1 * n)              # heavy hitters: the `first` text entries use up slots first
        assert s1 == s2 == N_IN and kv == (hh - first) + (recent - after)
        assert torch.equal(logits, tiny_ref)
    elif method == "prunevid":
        assert s2 < s1 < N_IN and st["segments"]
    elif method == "pdrop":                     # cuts at layers 1, 2, 3 keeping int(N lam^s), each layer its own cache
        assert s1 == N_IN and s2 == kv == N_IN // 8
        assert st["layer_tokens"] == st["layer_kv_tokens"] == [N_IN, N_IN // 2, N_IN // 4, N_IN // 8]
    elif method == "divprune":                  # int(round(0.098 x 392)) = 38 over the whole video
        assert s1 == s2 == 38
    elif method == "fastvid":                   # int(0.25 x 49) = 12 a frame (7 salient + 5 anchors) at most
        assert s1 == s2 == sum(info["kept_per_frame"]) <= FRAMES * 12
    elif method == "holitom":                   # windows + per-frame selection, then half merged at layer 2
        assert s1 <= count_for_ratio(0.25, N_IN) + FRAMES and s2 == kv == round(s1 * 0.5)
        assert st["layer_tokens"] == st["layer_kv_tokens"] == [s1, s1, s2, s2]
    elif method == "framefusion":               # in-LLM merges / pruning: 0.3 of the visual tokens per layer on average
        assert s1 == N_IN and st["layer_tokens"] == st["layer_kv_tokens"]
        assert abs(sum(st["layer_tokens"]) / (4 * N_IN) - 0.3) <= 0.02 and s2 == st["layer_tokens"][-1]
    if method != "lookm":
        assert kv == s2
        assert not torch.equal(logits, tiny_ref) if logits.shape == tiny_ref.shape else True
    assert st["text_tokens"] == tiny_inputs["input_ids"].shape[1] - N_IN


@pytest.mark.parametrize("method", list(CASES))
def test_generate_agrees_with_forward(tiny, tiny_inputs, method):
    model, _ = tiny
    params = CASES[method][0]
    _apply(model, method, params)
    try:
        with torch.no_grad():
            logits = model(**tiny_inputs).logits[:, -1]
            st = prunevid.stats(model)
            out = model.generate(**tiny_inputs, max_new_tokens=3, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True)
            st_gen = prunevid.stats(model)
            info = prunevid.patch.info(model)
    finally:
        prunevid.remove(model)
    assert out.sequences.shape[1] == tiny_inputs["input_ids"].shape[1] + 3
    assert st_gen == st                                   # generate's prefill pruned exactly like the forward
    torch.testing.assert_close(out.scores[0], logits, rtol=1e-4, atol=1e-4)
    if method == "dycoke":                      # a re-selecting step attends int((N - 1) * 0.2) + the last token
        assert info["decode_steps"] == 2 and info["decode_reselections"] >= 1
        n = st["visual_tokens_stage1"]
        assert info["decode_visual_kv_attended"] == (int((n - 1) * (1 - 0.8)) + 1 if info["decode_last_step_pruned"]
                                                     else n)


@pytest.mark.parametrize("method", [m for m in CASES if m != "none"])
def test_remove_restores(tiny, tiny_inputs, tiny_ref, method):
    model, _ = tiny
    cls = type(model.model)
    _apply(model, method, CASES[method][0])
    prunevid.remove(model)
    assert type(model.model) is cls and not prunevid.is_patched(model)
    for layer in model.model.language_model.layers:
        assert not layer._forward_pre_hooks and not layer._forward_hooks
    for layer in model.model.vision_tower.encoder.layers:
        assert not layer.self_attn._forward_pre_hooks
    with torch.no_grad():
        assert torch.equal(model(**tiny_inputs).logits, tiny_ref)


def test_validation_messages(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="no layer L to prune from"):
        prunevid.apply(model, method="dycoke", L=4)         # a 4-layer LLM: L in 1..3
    with pytest.raises(ValueError, match="no layer to prune"):
        prunevid.apply(model, method="fastv", K=4)
    with pytest.raises(ValueError, match="cannot be driven to a budget"):
        prunevid.apply(model, method="prumerge", retain=0.25)
    with pytest.raises(ValueError, match="has no parameter"):
        prunevid.apply(model, method="fastv", alpha=0.3)
    assert not prunevid.is_patched(model)


def test_decode_time_methods_change_decoding(tiny, tiny_inputs):
    """Look-M and DyCoke's stage 2 act on the cache: decode logits differ from the same prefill without them."""
    model, _ = tiny

    def second_step_scores(method, **params):
        prunevid.apply(model, method=method, **params)
        try:
            with torch.no_grad():
                out = model.generate(**tiny_inputs, max_new_tokens=2, do_sample=False, output_scores=True,
                                     return_dict_in_generate=True)
            return out.scores[1]
        finally:
            prunevid.remove(model)

    assert not torch.equal(second_step_scores("lookm"), second_step_scores("none"))
    assert not torch.equal(second_step_scores("dycoke", L=1), second_step_scores("dycoke", L=1, P=0.0))


def test_lookm_cache_sizes(tiny, tiny_inputs):
    model, _ = tiny
    prunevid.apply(model, method="lookm")
    try:
        with torch.no_grad():
            out = model(**tiny_inputs, use_cache=True)
        st = prunevid.stats(model)
    finally:
        prunevid.remove(model)
    cache = getattr(out, "cache", None) or out.past_key_values
    lengths = {layer.get_seq_length() for layer in cache.layers}
    assert lengths == {st["text_tokens"] + st["kv_visual_tokens"]}


@pytest.mark.parametrize("method,key", [("random", "visual_tokens_stage2"), ("fastv", "visual_tokens_stage2"),
                                        ("dycoke", "visual_tokens_stage2"), ("vidcom2", "visual_tokens_stage2"),
                                        ("oracle", "visual_tokens_stage2"), ("lookm", "kv_visual_tokens"),
                                        ("pdrop", "visual_tokens_stage2"), ("divprune", "visual_tokens_stage2"),
                                        ("fastvid", "visual_tokens_stage2")])
def test_kept_map_matches_counts(tiny, tiny_inputs, method, key):
    model, _ = tiny
    _apply(model, method, CASES[method][0])
    try:
        with torch.no_grad():
            model(**tiny_inputs)
        km, st = prunevid.methods.kept_map(model), prunevid.stats(model)
    finally:
        prunevid.remove(model)
    if method == "lookm":                       # each KV head keeps its own entries: the map is their union
        heads = model.config.text_config.num_key_value_heads
        assert km.shape == (FRAMES, P) and st[key] <= int(km.sum()) <= heads * st[key]
        return
    assert km.shape == (FRAMES, P) and int(km.sum()) == st[key]
