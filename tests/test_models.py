"""Every registered architecture, on a tiny random config: the same invariants as LLaVA-OneVision's."""
import pytest
import torch

import prunevid
from prunevid import models, video
from prunevid.prune import kept_count
from prunevid.tiny import build_tiny_llava_next_video, build_tiny_llava_onevision, build_tiny_pllava

BUILDERS = {"llava_onevision": build_tiny_llava_onevision, "llava_next_video": build_tiny_llava_next_video,
            "pllava": build_tiny_pllava}
FRAMES = 8


def _cache(out):
    c = getattr(out, "cache", None)
    return c if c is not None else out.past_key_values


@pytest.fixture(scope="module", params=list(BUILDERS))
def loaded(request):
    model, tok = BUILDERS[request.param]()
    spec = models.spec_for(model)
    assert spec.name == request.param
    pre = models.VideoPreprocessing(size=model.config.vision_config.image_size)
    lm = models.LoadedModel(model, tok, spec, pre, request.param)
    g = torch.Generator().manual_seed(0)
    frames = (torch.rand(1, 1, 64, 96, 3, generator=g) * 255).repeat(FRAMES, 1, 1, 1, 1)[:, 0]
    for t in range(FRAMES):                                    # a static background with a moving square
        frames[t, 10:30, 5 + 8 * t:25 + 8 * t] = 250
    inputs = video.build_inputs(lm, frames.to(torch.uint8), "Question: what moves?\nOptions:\n(A) a\n(B) b",
                                answer_prefix="Best option:(")
    yield lm, inputs
    prunevid.remove(model)


def test_no_op_settings_are_bit_identical(loaded):
    lm, inputs = loaded
    model = lm.model
    with torch.no_grad():
        ref = model(**inputs).logits
        ref_gen = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        for kwargs in ({"method": "none"}, {"stage1": False, "stage2": False, "selected_layer": 1}):
            prunevid.apply(model, **kwargs)
            assert torch.equal(model(**inputs).logits, ref)
            assert torch.equal(model.generate(**inputs, max_new_tokens=4, do_sample=False), ref_gen)
        prunevid.remove(model)
        assert torch.equal(model(**inputs).logits, ref)


def test_prunevid_prunes_and_the_cache_holds_text_plus_kept(loaded):
    lm, inputs = loaded
    model = lm.model
    prunevid.apply(model, selected_layer=1)
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
    s = prunevid.stats(model)
    per_frame = lm.spec.module.tokens_per_frame(model.config)
    assert s["visual_tokens_in"] == FRAMES * per_frame
    assert s["visual_tokens_stage2"] == kept_count(s["static_tokens"], s["dynamic_tokens"], s["segments"], 0.4)
    assert s["visual_tokens_stage2"] < s["visual_tokens_stage1"] < s["visual_tokens_in"]
    lengths = {layer.keys.shape[-2] for layer in _cache(out).layers}
    assert lengths == {s["text_tokens"] + s["visual_tokens_stage2"]}
    prunevid.remove(model)


def test_decode_loop_matches_generate(loaded):
    lm, inputs = loaded
    model = lm.model
    prunevid.apply(model, selected_layer=1)
    n_full = inputs["input_ids"].shape[1]
    with torch.no_grad():
        gen = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        out = model(**inputs, use_cache=True)
        cache, mask = _cache(out), inputs["attention_mask"]
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens = [token]
        for t in range(3):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(input_ids=token, attention_mask=mask, position_ids=torch.tensor([[n_full + t]]), cache=cache)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(token)
    assert torch.equal(torch.cat(tokens, 1), gen[:, n_full:])
    prunevid.remove(model)


@pytest.mark.parametrize("method,params", [("fastv", {"K": 1}), ("visionzip", {}), ("random", {}), ("vidcom2", {})])
def test_baselines_run_on_every_model(loaded, method, params):
    lm, inputs = loaded
    model = lm.model
    prunevid.apply(model, method=method, **params)
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
    s = prunevid.stats(model)
    assert s["visual_tokens_stage2"] < s["visual_tokens_in"]
    prunevid.remove(model)
