"""Every registered architecture, on a tiny random config: the same invariants as LLaVA-OneVision's."""
import pytest
import torch

import prunevid
from prunevid import models, video
from prunevid.prune import kept_count
from prunevid.tiny import (build_tiny_llava_next_video, build_tiny_llava_onevision, build_tiny_pllava,
                           build_tiny_qwen2_vl)

BUILDERS = {"llava_onevision": build_tiny_llava_onevision, "llava_next_video": build_tiny_llava_next_video,
            "pllava": build_tiny_pllava, "qwen2_5_vl": build_tiny_qwen2_vl,
            "qwen2_vl": lambda: build_tiny_qwen2_vl(version="2")}
FRAMES = 8


def _cache(out):
    c = getattr(out, "cache", None)
    return c if c is not None else out.past_key_values


@pytest.fixture(scope="module", params=list(BUILDERS))
def loaded(request):
    model, tok = BUILDERS[request.param]()
    spec = models.spec_for(model)
    assert spec.name == request.param.replace("qwen2_5_vl", "qwen2_vl")
    pre = models.VideoPreprocessing(size=getattr(model.config.vision_config, "image_size", 112))
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
    n_placeholders = int((inputs["input_ids"] == lm.spec.module.ADAPTER.placeholder_id(model.config)).sum())
    assert s["visual_tokens_in"] == n_placeholders - int(lm.spec.module.ADAPTER.has_newline)
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
    qwen = lm.spec.name == "qwen2_vl"
    with torch.no_grad():
        gen = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        out = model(**inputs, use_cache=True)
        cache, mask = _cache(out), inputs["attention_mask"]
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens = [token]
        for t in range(3):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            # LLaVA-style models: full-sequence positions as the user counts them; Qwen: let the patch place them
            pos = None if qwen else torch.tensor([[n_full + t]])
            out = model(input_ids=token, attention_mask=mask, position_ids=pos, cache=cache)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(token)
    assert torch.equal(torch.cat(tokens, 1), gen[:, n_full:])
    prunevid.remove(model)


@pytest.mark.parametrize("method,params", [("fastv", {"K": 1}), ("visionzip", {}), ("random", {}), ("vidcom2", {})])
def test_baselines_run_on_every_model(loaded, method, params):
    lm, inputs = loaded
    model = lm.model
    prunevid.apply(model, method=method, **params)
    if lm.spec.name == "qwen2_vl" and method == "visionzip":
        with pytest.raises(NotImplementedError, match="vision tower's attention"), torch.no_grad():
            model(**inputs)
        return
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
    s = prunevid.stats(model)
    assert s["visual_tokens_stage2"] < s["visual_tokens_in"]
    prunevid.remove(model)


def test_qwen_reduced_tokens_keep_their_original_positions():
    from prunevid.models import qwen2_vl
    from prunevid.models.video_patch import representative_sources
    model, tok = build_tiny_qwen2_vl()
    lm = models.LoadedModel(model, tok, models.spec_for(model), models.VideoPreprocessing(size=112), "qwen")
    frames = (torch.rand(FRAMES, 64, 64, 3, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8)
    inputs = video.build_inputs(lm, frames, "what moves?")
    assert int((inputs["mm_token_type_ids"] == 2).sum()) == FRAMES // 2 * 16
    full, _ = model.model.get_rope_index(inputs["input_ids"], video_grid_thw=inputs["video_grid_thw"],
                                         attention_mask=inputs["attention_mask"],
                                         mm_token_type_ids=inputs["mm_token_type_ids"])
    seen = []
    handle = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["position_ids"].clone()), with_kwargs=True)
    try:
        prunevid.apply(model, selected_layer=1, tau=0.0)          # many static tokens: merged across frames
        with torch.no_grad():
            out = model(**inputs, use_cache=True)
            red = model._prunevid.last_reduction
            feats = torch.cat(list(model.model.get_video_features(inputs["pixel_values_videos"],
                                                                   inputs["video_grid_thw"]).pooler_output))
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            model(input_ids=token, cache=_cache(out))
    finally:
        handle.remove()
        prunevid.remove(model)
    ids = inputs["input_ids"][0]
    first = int((ids == model.config.video_token_id).nonzero()[0])
    rep = representative_sources(red, feats)
    n_vis = red.num_tokens
    pre = seen[0]
    assert torch.equal(pre[..., :first], full[..., :first])                            # text before the video
    assert torch.equal(pre[..., first:first + n_vis], full[..., first + rep])          # tokens at their members
    assert torch.equal(pre[..., first + n_vis:], full[..., first + FRAMES // 2 * 16:])  # text after
    assert seen[1].flatten().unique().tolist() == [int(full.max()) + 1]               # decoding continues unreduced


def test_qwen_patchify_matches_the_reference_processor_layout():
    import numpy as np
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from prunevid.models.qwen2_vl import patchify
    img = np.random.default_rng(0).random((3, 56, 84)).astype(np.float32)
    ref, gh, gw = Qwen2VLImageProcessorPil().patchify(img, 14, 2, 2)     # an image = 2 identical frames
    mine, thw = patchify(torch.from_numpy(img)[None].repeat(2, 1, 1, 1))
    assert thw.tolist() == [[1, gh, gw]] and np.allclose(ref, mine.numpy())
