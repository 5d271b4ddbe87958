"""VisionZip, PruMerge and PruMerge+ against their authors' code (issue 18, "Fidelity, part two").

Upstream: dvlab-research/VisionZip ``visionzip/clip_encoder.py`` (``CLIPVisionTower_VisionZip.forward``), HoliTom's
LLaVA-OneVision port (cokeshao/HoliTom ``visionzip/llava_arch.py``), 42Shawn/LLaVA-PruMerge
``llava/model/multimodal_encoder/clip_encoder.py`` (``outlier_dectection``, ``token_prune_merge_advanced`` /
``_plus``). Expected numbers are worked out by hand from those rules.
"""
import dataclasses

import pytest
import torch

import prunevid
from prunevid import models, video
from prunevid.harness import budget
from prunevid.methods import prumerge, visionzip
from prunevid.methods.base import VideoContext
from prunevid.models.video_patch import vision_layer_index
from prunevid.models.tiny import build_tiny_llava_next_video, build_tiny_llava_onevision, build_tiny_pllava


# -- VisionZip: kernel ------------------------------------------------------------------------------------------
def test_visionzip_contextual_is_target_plus_mean_of_assigned():
    tokens = torch.arange(8, dtype=torch.float32)[:, None].repeat(1, 2)      # token j = [j, j]
    importance = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.0, 0.0, 0.0, 0.0])
    keys = torch.tensor([[1.0, 0], [0, 1], [1, 0.1], [0, 1], [0, 1], [1, -0.1], [-1, 0], [0.9, 0.2]])
    out, labels = visionzip.visionzip_frame(tokens, importance, keys, n_dominant=2, n_contextual=3)
    # dominant 1, 3; remaining 0,2,4,5,6,7 -> step 6 // 3 = 2 -> targets 0, 4, 6; 2, 5, 7 all nearest to target 0
    assert out[:, 0].tolist() == pytest.approx([1.0, 3.0, 0 + (2 + 5 + 7) / 3, 4.0, 6.0])
    assert labels.tolist() == [2, 0, 2, 1, 3, 2, 4, 2]


def test_visionzip_split_counts_floor_as_holitom():
    # HoliTom: dominant_num = int(SPATIAL_TOKENS * 54/64)
    assert visionzip.split_counts(20, 54 / 64) == (16, 4)      # 16.875
    assert visionzip.split_counts(30, 54 / 64) == (25, 5)      # 25.3125
    assert visionzip.split_counts(40, 54 / 64) == (33, 7)      # 33.75
    assert visionzip.split_counts(50, 54 / 64) == (42, 8)      # 42.1875


# -- PruMerge: kernels ------------------------------------------------------------------------------------------
def test_prumerge_selection_order_and_float_count():
    imp = torch.tensor([1.0, 1, 1, 7, 1, 9, 1, 1])              # Q1 = Q3 = 1: outliers 3 and 5
    idx, r = prumerge.adaptive_selection(imp)
    assert idx.tolist() == [5, 3] and r == 0.25                  # descending importance (upstream's topk order)
    imp = torch.ones(196)
    imp[10], imp[20] = 5.0, 9.0
    idx, r = prumerge.adaptive_selection(imp)
    # int(196 * (2 / 196)) = int(1.9999999999999998) = 1: upstream keeps one token of the two outliers
    assert r == 2 / 196 and idx.tolist() == [20]
    idx, r = prumerge.adaptive_selection(torch.ones(8))          # no outlier: nothing selected
    assert idx.numel() == 0 and r == 0.0


def test_prumerge_plus_adaptive_stride():
    # ratio 2/64: int(1 / (1/32)) = 32, int(32 / 3) = 10 -> arange(0, 63, 10), minus the selected 20 and 40
    assert prumerge.spatial_samples(torch.tensor([20, 40]), 64, 2 / 64).tolist() == [0, 10, 30, 50, 60]
    # OV grid, 10 outliers: int(1 / (10/196)) = int(19.6) = 19, int(19 / 3) = 6 -> 0, 6, ..., 192 (33), minus 6
    sel = torch.arange(1, 11)
    samples = prumerge.spatial_samples(sel, 196, 10 / 196)
    assert samples.tolist() == [0] + list(range(12, 193, 6)) and samples.numel() == 32
    assert prumerge.spatial_samples(torch.zeros(0, dtype=torch.long), 196, 0.0).tolist() == [0]   # ratio 0: limit
    # the kit's retain= option: evenly spaced unselected tokens up to a fixed count
    assert prumerge.spatial_samples(torch.tensor([7]), 8, 1 / 8, n_total=3).tolist() == [0, 6]
    assert prumerge.spatial_samples(torch.tensor([1, 2, 3]), 8, 3 / 8, n_total=2).numel() == 0


def test_prumerge_neighbours_include_kept_tokens_and_summary_is_a_sum():
    tokens = torch.eye(4)
    imp = torch.tensor([0.5, 0.1, 0.2, 0.2])
    keys = torch.tensor([[1.0, 0], [0, 1], [1, 0.05], [0.3, 1]])
    # kept 0 and 2 (in that output order): each one's nearest other token by key cosine is the other kept one
    out = prumerge.knn_merge(tokens, imp, keys, torch.tensor([0, 2]), k_neighbors=1, summary_token=True)
    torch.testing.assert_close(out, torch.tensor([[1.0, 0, 0.2, 0],      # x0 + 0.2 x2 (x2 unmerged)
                                                  [0.5, 0, 1, 0],        # x2 + 0.5 x0
                                                  [0, 0.1, 0, 0.2]]))    # 0.1 x1 + 0.2 x3, not divided by 0.3
    # k larger than the other tokens: all of them (upstream's topk would fail)
    out = prumerge.knn_merge(tokens[:3], imp[:3], keys[:3], torch.tensor([1]), k_neighbors=32, summary_token=False)
    torch.testing.assert_close(out, torch.tensor([[0.5, 1, 0.2, 0]]))


def _ctx(tokens, importance, keys):
    return VideoContext(frames=tokens[None], grid=(1, tokens.shape[0]), importance=importance[None], keys=keys[None])


def test_prumerge_method_output_order_and_empty_selection():
    tokens = torch.eye(8)
    imp = torch.tensor([1.0, 1, 1, 7, 1, 9, 1, 1])
    red = prumerge.PruMergeMethod(prumerge.PruMergeConfig(k_neighbors=0)).reduce(_ctx(tokens, imp, tokens))
    # rows: x5, x3 (descending importance), then the summary 1 x (x0 + x1 + x2 + x4 + x6 + x7)
    expected = torch.stack([tokens[5], tokens[3], torch.tensor([1.0, 1, 1, 0, 1, 0, 1, 1])])
    torch.testing.assert_close(red.tokens, expected)
    assert red.kept[0].nonzero().squeeze(1).tolist() == [3, 5] and red.info["kept_per_frame"] == [2]
    # no outlier: the frame is its summary token alone (upstream topk of int(P * 0) = 0 tokens)
    red = prumerge.PruMergeMethod(prumerge.PruMergeConfig()).reduce(_ctx(tokens, torch.full((8,), 0.5), tokens))
    torch.testing.assert_close(red.tokens, torch.full((1, 8), 0.5))


def test_prumerge_plus_method_default_is_the_adaptive_stride():
    tokens = torch.eye(64)
    imp = torch.ones(64)
    imp[20], imp[40] = 9.0, 5.0
    red = prumerge.PruMergePlusMethod(prumerge.PruMergePlusConfig(k_neighbors=0)).reduce(_ctx(tokens, imp, tokens))
    order = [20, 40, 0, 10, 30, 50, 60]                            # outliers, then the stride samples
    torch.testing.assert_close(red.tokens[:7], tokens[order])
    assert red.num_tokens == 8 and red.info["kept_per_frame"] == [7]
    red = prumerge.PruMergePlusMethod(prumerge.PruMergePlusConfig(k_neighbors=0, retain=0.25)).reduce(
        _ctx(tokens, imp, tokens))
    assert red.info["kept_per_frame"] == [16]                      # the kit's option: floor(0.25 x 64)


def test_prumerge_plus_config_and_budget():
    assert [f.name for f in dataclasses.fields(prumerge.PruMergePlusConfig)] == [
        "k_neighbors", "iqr_scale", "summary_token", "retain"]
    cfg = prumerge.PruMergePlusConfig()
    assert cfg.retain is None and cfg.k_neighbors == 32 and cfg.iqr_scale == 1.5 and cfg.summary_token
    assert prumerge.PruMergePlusMethod(cfg).prunes
    assert not prumerge.PruMergePlusMethod(prumerge.PruMergePlusConfig(retain=1.0, k_neighbors=0,
                                                                       summary_token=False)).enabled
    params, note = budget.budget_params("prumerge+", 0.25)
    assert params == {"retain": 0.25} and "fixed-count" in note


# -- the vision signals on real towers ---------------------------------------------------------------------------
def _inputs(model, tok):
    spec = models.spec_for(model)
    lm = models.LoadedModel(model, tok, spec, models.VideoPreprocessing(size=model.config.vision_config.image_size),
                            spec.name)
    g = torch.Generator().manual_seed(0)
    frames = (torch.rand(8, 64, 96, 3, generator=g) * 255).to(torch.uint8)
    return video.build_inputs(lm, frames, "What moves?")


@pytest.fixture(scope="module")
def next_video():
    model, tok = build_tiny_llava_next_video()
    eager, _ = build_tiny_llava_next_video(attn_implementation="eager")        # same seed: same weights
    return model, eager, _inputs(model, tok)


def _vision_record(model, inputs, method, **params):
    prunevid.apply(model, method=method, **params)
    try:
        with torch.no_grad():
            model(**inputs)
        return dict(prunevid.state.get(model).vision), prunevid.state.last_reduction(model.model)
    finally:
        prunevid.remove(model)


def test_visionzip_uses_cls_attention_on_clip(next_video):
    model, eager, inputs = next_video
    vis, red = _vision_record(model, inputs, "visionzip")
    assert vis["rule"] == "cls_heads_sum" and vis["layer"] == 0          # feature layer -2 of a 2-layer tower
    pix = inputs["pixel_values_videos"][0]
    with torch.no_grad():
        att = eager.model.vision_tower(pix, output_attentions=True).attentions[-2]      # (F, H, 1 + Np, 1 + Np)
    cls = att[:, :, 0, :].sum(1)                                          # CLS row summed over heads (upstream)
    torch.testing.assert_close(vis["importance"], cls, rtol=1e-4, atol=1e-6)
    # the dominant tokens are the top int(12 x 54/64) = 10 of the CLS attention to the patches, 2x2-pooled
    pooled = torch.nn.functional.avg_pool2d(cls[:, 1:].reshape(-1, 1, 14, 14), 2).flatten(1)   # (F, 49)
    for f in range(pooled.shape[0]):
        assert red.kept[f].nonzero().squeeze(1).tolist() == pooled[f].topk(10).indices.sort().values.tolist()


def test_prumerge_uses_full_qk_cls_attention_of_the_next_layer_on_clip(next_video):
    model, eager, inputs = next_video
    vis, _ = _vision_record(model, inputs, "prumerge")
    assert vis["rule"] == "cls_full" and vis["layer"] == 1                # the layer after the feature layer
    pix = inputs["pixel_values_videos"][0]
    layer = eager.model.vision_tower.encoder.layers[1]
    with torch.no_grad():
        h = layer.layer_norm1(eager.model.vision_tower(pix, output_hidden_states=True).hidden_states[1])
        q, k = layer.self_attn.q_proj(h), layer.self_attn.k_proj(h)   # (F, 1 + Np, 32): heads concatenated
        cls = ((q[:, :1] @ k.transpose(1, 2)) * 32 ** -0.5).softmax(-1)[:, 0]
    torch.testing.assert_close(vis["importance"], cls, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(vis["keys"], k, rtol=1e-4, atol=1e-6)


def test_pllava_clip_tower_gets_the_cls_rules():
    model, tok = build_tiny_pllava()
    inputs = _inputs(model, tok)
    vis, _ = _vision_record(model, inputs, "visionzip")
    assert (vis["rule"], vis["keys_rule"], vis["layer"]) == ("cls_heads_sum", "head_mean", 0)
    vis, red = _vision_record(model, inputs, "prumerge+")
    assert (vis["rule"], vis["keys_rule"], vis["layer"]) == ("cls_full", "full", 1)
    assert red.num_tokens > 0


def test_siglip_prumerge_stays_on_the_feature_layer_with_full_keys(tiny, tiny_inputs):
    model, _ = tiny
    eager = build_tiny_llava_onevision(attn_implementation="eager")[0]
    assert vision_layer_index(model.model.vision_tower, -1, 1) == 1      # no layer after SigLIP's last one
    vis, _ = _vision_record(model, tiny_inputs, "prumerge")
    assert (vis["rule"], vis["keys_rule"], vis["layer"]) == ("received", "full", 1)
    pix = tiny_inputs["pixel_values_videos"][0]
    with torch.no_grad():
        att = eager.model.vision_tower(pix, output_attentions=True).attentions[-1]   # (F, H, Np, Np)
    torch.testing.assert_close(vis["importance"], att.mean(1).mean(1), rtol=1e-4, atol=1e-7)
    assert vis["keys"].shape[-1] == model.config.vision_config.hidden_size
