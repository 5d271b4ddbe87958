"""Every registered architecture, on a tiny random config: the same invariants as LLaVA-OneVision's."""
import pytest
import torch

import prunevid
from prunevid import models, video
from prunevid.prune import kept_count
from prunevid.models.tiny import (build_tiny_llava_next_video, build_tiny_llava_onevision, build_tiny_pllava,
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


@pytest.mark.parametrize("method,params", [("fastv", {"K": 1}), ("visionzip", {}), ("random", {}), ("vidcom2", {}),
                                           ("pdrop", {}), ("divprune", {}), ("holitom", {}),
                                           ("fastvid", {"retain": 0.25}), ("framefusion", {})])
def test_baselines_run_on_every_model(loaded, method, params):
    lm, inputs = loaded
    model = lm.model
    prunevid.apply(model, method=method, **params)
    if lm.spec.name == "qwen2_vl" and method in ("visionzip", "holitom", "fastvid"):
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
            red = prunevid.state.last_reduction(model)
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


def _onevision_inputs(frames_seed: int = 5):
    model, tok = build_tiny_llava_onevision()
    lm = models.LoadedModel(model, tok, models.spec_for(model), models.VideoPreprocessing(size=112), "ov")
    frames = (torch.rand(FRAMES, 64, 64, 3, generator=torch.Generator().manual_seed(frames_seed)) * 255)
    inputs = video.build_inputs(lm, frames.to(torch.uint8), "what moves?", answer_prefix="Best option:(")
    return lm, inputs


@pytest.mark.parametrize("positions", ["renumber", "original"])
@pytest.mark.parametrize("method,params", [("random", {"retain": 0.3}), ("vidcom2", {"retain": 0.3}),
                                           ("dycoke", {"retain": 0.5, "decode_pruning": False})])
def test_a_selection_equals_the_unpatched_model_on_the_kept_embeddings(method, params, positions):
    """The patched prefill is the unpatched model run on the kept embeddings at the chosen positions: 0..N1-1
    (official re-numbering) or the kept tokens' own indices in the full prompt (``positions="original"``)."""
    lm, inputs = _onevision_inputs()
    model = lm.model
    ids = inputs["input_ids"][0]
    placeholders = (ids == model.config.video_token_id).nonzero().squeeze(1)
    first, n_feat = int(placeholders[0]), placeholders.numel() - 1               # the last one is the newline
    with torch.no_grad():
        feats = model.model.get_video_features(inputs["pixel_values_videos"], return_dict=True).pooler_output[0]
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        embeds[0, placeholders] = feats
        prunevid.apply(model, method=method, positions=positions, **params)
        patched = model(**inputs).logits[0, -1]
        red = prunevid.state.last_reduction(model)
        kept = red.info.get("sources", red.kept.reshape(-1).nonzero().squeeze(1))   # DyCoke: its own order
        prunevid.remove(model)
        src = torch.cat([torch.arange(first), first + kept, torch.arange(first + n_feat, ids.numel())])
        pos = src[None] if positions == "original" else torch.arange(src.numel())[None]
        ref = model(inputs_embeds=embeds[:, src], position_ids=pos).logits[0, -1]
        other = model(inputs_embeds=embeds[:, src],
                      position_ids=torch.arange(src.numel())[None] if positions == "original" else src[None])
    torch.testing.assert_close(patched, ref)
    assert not torch.allclose(patched, other.logits[0, -1])      # the choice of positions changes the output


def test_original_positions_place_merged_tokens_at_their_earliest_member_and_decode_from_the_full_length():
    from prunevid.models.video_patch import representative_sources
    lm, inputs = _onevision_inputs()
    model = lm.model
    n_full = inputs["input_ids"].shape[1]
    seen = []
    handle = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["position_ids"].clone()), with_kwargs=True)
    try:
        prunevid.apply(model, selected_layer=1, tau=0.0, positions="original")   # many tokens merged in time
        with torch.no_grad():
            out = model(**inputs, use_cache=True)
            red = prunevid.state.last_reduction(model)
            feats = model.model.get_video_features(inputs["pixel_values_videos"], return_dict=True).pooler_output[0]
            gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    finally:
        handle.remove()
        prunevid.remove(model)
    ids = inputs["input_ids"][0]
    first = int((ids == model.config.video_token_id).nonzero()[0])
    n_feat = feats.shape[0] - 1
    rep = representative_sources(red, feats[:n_feat])
    assert red.num_tokens < n_feat
    pre, n_vis = seen[0][0], red.num_tokens
    assert torch.equal(pre[:first], torch.arange(first))                            # text before the video
    assert torch.equal(pre[first:first + n_vis], first + rep)                         # merged: earliest member
    assert torch.equal(pre[first + n_vis:], torch.arange(first + n_feat, n_full))     # newline and text after
    # generate: prefill (same as above), then each new token continues from the unreduced length
    assert [int(p.flatten()[-1]) for p in seen[-2:]] == [n_full, n_full + 1]
    assert gen.shape[1] == n_full + 3


def test_original_positions_also_undo_the_reordering_of_a_stage_1_that_removes_nothing():
    """At tau 1 and cluster_ratio 1 stage 1 removes nothing but outputs each frame's tokens in DPC-KNN centre-score
    order; re-numbering then scrambles the frame's layout, ``positions="original"`` gives every token its own."""
    from prunevid.models.video_patch import representative_sources
    lm, inputs = _onevision_inputs()
    model = lm.model
    seen = []
    handle = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw.get("position_ids")), with_kwargs=True)
    try:
        with torch.no_grad():
            for positions in ("renumber", "original"):
                prunevid.apply(model, tau=1.0, cluster_ratio=1.0, stage2=False, min_merge_size=0, positions=positions)
                model(**inputs)
        red = prunevid.state.last_reduction(model)
        feats = model.model.get_video_features(inputs["pixel_values_videos"], return_dict=True).pooler_output[0]
    finally:
        handle.remove()
        prunevid.remove(model)
    n_feat = feats.shape[0] - 1
    rep = representative_sources(red, feats[:n_feat])
    assert red.num_tokens == n_feat and not torch.equal(rep, torch.arange(n_feat))     # a pure permutation
    assert torch.equal(rep.sort().values, torch.arange(n_feat))
    first = int((inputs["input_ids"][0] == model.config.video_token_id).nonzero()[0])
    renumbered, original = seen
    n = inputs["input_ids"].shape[1]
    assert renumbered is None or torch.equal(renumbered[0], torch.arange(n))           # the model's own 0..N-1
    assert torch.equal(original[0, first:first + n_feat], first + rep)
