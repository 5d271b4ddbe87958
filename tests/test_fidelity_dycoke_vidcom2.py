"""DyCoke and VidCom2 against their authors' code (KD-TAO/DyCoke, xuyang-liu16/VidCom2), rule by rule.

Every expected number is worked out by hand from upstream's rule (the comments show the arithmetic), not
produced by running the kit.
"""
import pytest
import torch

import prunevid
from prunevid.harness import budget
from prunevid.methods import dycoke, vidcom2
from prunevid.methods.base import VideoContext
from prunevid.models.video_patch import representative_sources


# ================================================================================ DyCoke, token temporal merging
def test_dycoke_pairs_follow_upstream_loops():
    # pass 1: (i+1, i) for i in range(0, F-1, 2); pass 2: (i+2, i) for i in range(0, F-4, 4)
    assert dycoke.ttm_pairs(8) == [(1, 0), (2, 0), (3, 2), (5, 4), (7, 6)]           # pass 2: i = 0 only
    assert dycoke.ttm_pairs(9) == [(1, 0), (2, 0), (3, 2), (5, 4), (6, 4), (7, 6)]   # pass 2: i = 0, 4
    assert dycoke.ttm_pairs(4) == [(1, 0), (3, 2)]                                     # range(0, 0, 4): none
    assert dycoke.ttm_pairs(2) == [(1, 0)]
    assert dycoke.ttm_pairs(1) == []


def test_dycoke_frame_counts():
    # 32 frames: whole = 0, 4, ..., 28 (8) + 30 (the last window's third frame) = 9; compared 16 odd + 7
    assert dycoke.ttm_frame_counts(32) == (9, 23, 0)
    assert dycoke.ttm_frame_counts(16) == (5, 11, 0)          # whole 0, 4, 8, 12, 14
    assert dycoke.ttm_frame_counts(8) == (3, 5, 0)            # whole 0, 4, 6
    assert dycoke.ttm_frame_counts(7) == (2, 4, 1)            # whole 0, 4; frame 6 dropped
    assert dycoke.ttm_frame_counts(7, keep_odd_last_frame=True) == (3, 4, 0)


def test_dycoke_keep_count_truncates_like_upstream():
    assert dycoke.ttm_keep_count(0.7, 196) == 58              # int(0.30000000000000004 * 196) = int(58.8)
    assert dycoke.ttm_keep_count(0.7, 49) == 14               # int(14.7)
    assert dycoke.ttm_keep_count(0.9, 10) == 0                # (1 - 0.9) * 10 = 0.9999999999999998
    assert dycoke.ttm_keep_count(0.0, 49) == 49


def test_dycoke_retains_49_4_percent_at_32_frames_k07():
    """Upstream at 32 frames x 196 tokens, K = 0.7: 9 x 196 + 23 x 58 = 1764 + 1334 = 3098 of 6272 = 49.4 %
    (the kit's old every-window rule kept 8 x 196 + 24 x 58 = 2960, 47.2 %)."""
    frames = torch.randn(32, 196, 8, generator=torch.Generator().manual_seed(0))
    kept = dycoke.dycoke_ttm_keep(frames, 0.7)
    assert int(kept.sum()) == 3098
    assert round(3098 / 6272, 3) == 0.494
    whole = {0, 4, 8, 12, 16, 20, 24, 28, 30}
    assert kept.sum(1).tolist() == [196 if t in whole else 58 for t in range(32)]


def _frames_with_changes(num_frames, changes, p=4, c=3, seed=0):
    """Every frame equal to frame 0, then ``changes[t] = (ref, loc)``: frame t is frame ``ref`` with the token at
    ``loc`` negated (cosine -1 against ``ref`` there, +1 elsewhere)."""
    base = torch.randn(p, c, generator=torch.Generator().manual_seed(seed)) + 2.0
    frames = base[None].repeat(num_frames, 1, 1)
    for t in sorted(changes):
        ref, loc = changes[t]
        frames[t] = frames[ref]
        frames[t, loc] = -frames[ref, loc]
    return frames


def test_dycoke_each_compared_frame_keeps_its_least_similar_tokens():
    # 6 frames: pass 1 (1,0), (3,2), (5,4); pass 2 (range(0, 2, 4) = [0]): (2,0). K = 0.75, P = 4: n = 1
    frames = _frames_with_changes(6, {1: (0, 2), 2: (0, 0), 3: (2, 3), 4: (0, 1), 5: (4, 1)})
    kept = dycoke.dycoke_ttm_keep(frames, 0.75)
    assert [row.nonzero().squeeze(1).tolist() for row in kept] == [[0, 1, 2, 3], [2], [0], [3], [0, 1, 2, 3], [1]]


def test_dycoke_last_window_third_frame_stays_whole():
    # 8 frames: pass 2 runs for i = 0 only (range(0, 4, 4)), so frame 6 is not compared with frame 4
    frames = _frames_with_changes(8, {6: (0, 1)})
    kept = dycoke.dycoke_ttm_keep(frames, 0.75)
    assert kept[6].all() and kept[4].all() and kept[0].all()
    assert kept[2].sum() == 1 and kept[7].sum() == 1


def test_dycoke_compared_tokens_enter_in_similarity_order():
    # frame 1 against frame 0 ([1, 0] everywhere): cosines 0.6, 0, 1, -0.8 -> K = 0.5, n = int(0.5 * 4) = 2:
    # least similar first: location 3 (-0.8), then 1 (0)
    frames = torch.tensor([[[1.0, 0.0]] * 4,
                           [[0.6, 0.8], [0.0, 1.0], [1.0, 0.0], [-0.8, 0.6]]])
    src = dycoke.dycoke_ttm_sources(frames, 0.5)
    assert src.tolist() == [0, 1, 2, 3, 4 + 3, 4 + 1]
    assert dycoke.dycoke_ttm_keep(frames, 0.5).view(-1).nonzero().squeeze(1).tolist() == [0, 1, 2, 3, 5, 7]


def test_dycoke_odd_frame_count_drops_last_frame_by_default():
    # 5 frames of 4 tokens, K = 0.7: n = int(0.30000000000000004 * 4) = 1; pass 2 i = 0 (range(0, 1, 4))
    frames = torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(1))
    kept = dycoke.dycoke_ttm_keep(frames, 0.7)
    assert kept.sum(1).tolist() == [4, 1, 1, 1, 0]                          # frame 4 dropped, as upstream
    kept = dycoke.dycoke_ttm_keep(frames, 0.7, keep_odd_last_frame=True)
    assert kept.sum(1).tolist() == [4, 1, 1, 1, 4]
    assert dycoke.dycoke_ttm_sources(frames, 0.7, keep_odd_last_frame=True)[-4:].tolist() == [16, 17, 18, 19]
    method = dycoke.DyCokeMethod(dycoke.DyCokeConfig())
    with pytest.warns(UserWarning, match="drops the last of 5 frames"):
        red = method.reduce(VideoContext(frames=frames, grid=(2, 2)))
    assert red.num_tokens == 7 and red.info["dropped_frames"] == [4]


def test_dycoke_short_videos_run_pass_1_only():
    # upstream's torch.stack of the empty pass-2 list fails for F <= 4; the kit runs pass 1 alone
    frames = torch.randn(4, 4, 3, generator=torch.Generator().manual_seed(2))
    assert dycoke.dycoke_ttm_keep(frames, 0.75).sum(1).tolist() == [4, 1, 4, 1]
    assert dycoke.dycoke_ttm_keep(frames[:2], 0.75).sum(1).tolist() == [4, 1]
    assert dycoke.dycoke_ttm_keep(frames[:3], 0.75).sum(1).tolist() == [4, 1, 0]
    with pytest.raises(ValueError, match="keep_odd_last_frame"):
        dycoke.dycoke_ttm_keep(frames[:1], 0.75)
    assert dycoke.dycoke_ttm_keep(frames[:1], 0.75, keep_odd_last_frame=True).sum().item() == 4


def test_dycoke_reduction_order_is_placeable():
    frames = torch.randn(8, 4, 3, generator=torch.Generator().manual_seed(3))
    red = dycoke.DyCokeMethod(dycoke.DyCokeConfig()).reduce(VideoContext(frames=frames, grid=(2, 2)))
    src = red.info["sources"]
    assert torch.equal(red.tokens, frames.reshape(-1, 3)[src])
    assert torch.equal(representative_sources(red, frames.reshape(-1, 3)), src)


# ====================================================================================== DyCoke, settings, budget
def test_dycoke_defaults_are_the_lmms_eval_wrapper_settings():
    cfg = dycoke.DyCokeConfig()
    assert (cfg.K, cfg.P, cfg.similarity_threshold) == (0.7, 0.8, 0.9) and dycoke.DyCokeConfig.layer_fields == {"L": 3}
    assert not cfg.keep_odd_last_frame and cfg.decode_pruning and cfg.retain is None


def test_dycoke_retain_inversion():
    # 8 x 49: whole 3, compared 5. target int(0.5 * 392) = 196 -> n = (196 - 147) // 5 = 9 -> 147 + 45 = 192
    k, n, ok = dycoke.merge_ratio_for_retain(0.5, 8, 49)
    assert (n, ok) == (9, True) and dycoke.ttm_keep_count(k, 49) == 9
    # 32 x 196: target int(0.4 * 6272) = 2508 -> n = (2508 - 1764) // 23 = 32
    k, n, ok = dycoke.merge_ratio_for_retain(0.4, 32, 196)
    assert (n, ok) == (32, True) and dycoke.ttm_keep_count(k, 196) == 32
    assert dycoke.merge_ratio_for_retain(9 / 32, 32, 196)[1:] == (0, True)     # exactly the whole frames
    assert dycoke.merge_ratio_for_retain(0.25, 32, 196)[1:] == (0, False)      # below 9/32: unreachable
    assert dycoke.merge_ratio_for_retain(1.0, 8, 49)[:2] == (0.0, 49)


def test_dycoke_budget_on_the_tiny_model(tiny, tiny_inputs):
    model, _ = tiny
    rec = budget.run_at_budget(model, tiny_inputs, "dycoke", 0.5, L=1)
    assert rec["reachable"] and rec["stats"]["visual_tokens_stage1"] == 192                 # 3 x 49 + 5 x 9
    rec = budget.run_at_budget(model, tiny_inputs, "dycoke", 0.25, L=1)
    assert not rec["reachable"] and "3/8" in rec["note"]
    assert rec["stats"]["visual_tokens_stage1"] == 147                                      # K = 1: 3 x 49


def test_dycoke_depth_check(tiny):
    model, _ = tiny                                                           # 4 decoder layers: L in 1..3
    with pytest.raises(ValueError, match="L-1"):
        prunevid.apply(model, method="dycoke", L=0)
    with pytest.raises(ValueError, match="no layer L"):
        prunevid.apply(model, method="dycoke", L=4)
    prunevid.apply(model, method="dycoke", L=3)                               # the default depth fits
    prunevid.remove(model)
    prunevid.apply(model, method="dycoke", L=9, decode_pruning=False)
    prunevid.remove(model)


# ============================================================================== DyCoke, decode-time KV pruning
def _decode_attentions(model, inputs, steps=2, **params):
    """Eager attention weights of every layer at each decode step: ((H, kv) per layer) per step, and info."""
    prunevid.apply(model, method="dycoke", **params)
    try:
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=steps + 1, do_sample=False, output_attentions=True,
                                 return_dict_in_generate=True)
        info, st = prunevid.patch.info(model), prunevid.stats(model)
    finally:
        prunevid.remove(model)
    start = int((inputs["input_ids"][0] == model.config.video_token_id).nonzero()[0])     # first visual token
    visual = slice(start, start + st["visual_tokens_stage1"])
    return [[a[0, :, -1] for a in step] for step in out.attentions[1:]], info, visual


N_VIS = 3 * 49 + 5 * 14     # the tiny model's 8 frames of 49 after the merging at K = 0.7: 217
N_KEEP = 43                 # int((217 - 1) * (1 - 0.8)) = int(43.199999999999996)


def test_dycoke_decode_scores_layer_l_minus_1_and_prunes_from_layer_l(tiny_eager, tiny_inputs):
    model, _ = tiny_eager
    # threshold 1.0: every step re-selects
    steps, info, vis = _decode_attentions(model, tiny_inputs, L=2, similarity_threshold=1.0)
    assert vis.stop - vis.start == N_VIS
    step = steps[0]
    attended = [int((a.mean(0)[vis] > 0).sum()) for a in step]
    assert attended == [N_VIS, N_VIS, N_KEEP + 1, N_KEEP + 1]          # layers 0, 1 full; from layer L = 2 pruned
    assert all(a.mean(0)[vis.stop - 1] > 0 for a in step)              # the last visual token is never scored
    scored = slice(vis.start, vis.stop - 1)
    selected = set((step[2].mean(0)[scored] > 0).nonzero().squeeze(1).tolist())
    # the selection is the top 43 of layer L-1's head-mean attention of the new token (HF's eager weights)
    assert selected == set(step[1].mean(0)[scored].topk(N_KEEP).indices.tolist())
    # ... and not layer L's own attention (the kit's old rule), seen in a run without decode pruning
    plain, _, _ = _decode_attentions(model, tiny_inputs, L=2, P=0.0)
    assert selected != set(plain[0][2].mean(0)[scored].topk(N_KEEP).indices.tolist())
    assert info["decode_reselections"] == 2 and info["decode_visual_kv_attended"] == N_KEEP + 1


def test_dycoke_stable_step_uses_the_full_cache(tiny_eager, tiny_inputs):
    model, _ = tiny_eager
    # threshold 1e-6: the first step re-selects (upstream's similarity is 0 there); every later step is stable
    # (two softmax vectors have a positive cosine) and attends to the whole cache, not the first selection
    steps, info, vis = _decode_attentions(model, tiny_inputs, L=2, similarity_threshold=1e-6)
    assert [int((a.mean(0)[vis] > 0).sum()) for a in steps[0]] == [N_VIS, N_VIS, N_KEEP + 1, N_KEEP + 1]
    assert [int((a.mean(0)[vis] > 0).sum()) for a in steps[1]] == [N_VIS] * 4
    assert (info["decode_reselections"], info["decode_full_cache_steps"]) == (1, 1)
    assert info["decode_visual_kv_attended"] == N_VIS and info["decode_last_step_pruned"] is False


def test_dycoke_reselection_rule():
    a = torch.tensor([1.0, 0.0, 0.0])
    assert dycoke.attention_changed(None, a, 0.9)                          # first step: similarity 0 < 0.9
    assert not dycoke.attention_changed(None, a, -0.5)                     # 0 < -0.5 is false
    assert not dycoke.attention_changed(a, torch.tensor([0.9, 0.1, 0.0]), 0.9)    # cos = 0.9939 >= 0.9
    assert dycoke.attention_changed(a, torch.tensor([0.5, 0.5, 0.0]), 0.9)        # cos = 0.7071 < 0.9
    assert dycoke.decode_keep_count(217, 0.8) == 43 and dycoke.decode_keep_count(11, 0.7) == 3


# ============================================================================================== VidCom2
def test_vidcom2_frame_budgets_round_half_to_even():
    # equal frame scores: w = 1/4 each, scale = retain exactly
    assert vidcom2.frame_budgets(torch.ones(4), 0.3, 49).tolist() == [15] * 4      # 14.7 -> 15 (floor: 14)
    assert vidcom2.frame_budgets(torch.ones(4), 0.25, 14).tolist() == [4] * 4      # 3.5 -> 4
    assert vidcom2.frame_budgets(torch.ones(4), 0.25, 10).tolist() == [2] * 4      # 2.5 -> 2 (half to even)
    assert vidcom2.frame_budgets(torch.ones(4), 0.01, 10).tolist() == [1] * 4      # 0.1 -> 0 -> at least 1


def test_vidcom2_frame_budgets_weights():
    # s = -[1, 1, .99, 1]; (s - max s) / 0.01 = [-1, -1, 0, -1]; w = [e^-1, e^-1, 1, e^-1] / (1 + 3 e^-1)
    # = [0.174878, 0.174878, 0.475367, 0.174878]; scale = 0.25 (1 + w - 0.25) = [0.231219, .., 0.306342, ..]
    # x 60 = 13.873 -> 14 (floor: 13) and 18.381 -> 18
    assert vidcom2.frame_budgets(torch.tensor([1.0, 1.0, 0.99, 1.0]), 0.25, 60).tolist() == [14, 14, 18, 14]
    # one frame takes all the weight: scale 0.9 (1 + 1 - 0.25) clamped to 1 -> 10; others 0.9 x 0.75 x 10 = 6.75 -> 7
    assert vidcom2.frame_budgets(torch.tensor([0.0, 1.0, 1.0, 1.0]), 0.9, 10).tolist() == [10, 7, 7, 7]


def test_vidcom2_scores_on_the_low_variance_channels_only():
    # channel 0: small values, variance ~0.01; channel 1: large values, variance ~100. channel_keep 0.5 keeps
    # channel 0 alone; normalised on it every token is +1 except the negated ones (frame 0 loc 5, frame 1 loc 2),
    # the most distinctive. Channel 1 peaks elsewhere (loc 0), so using it would keep other tokens.
    frames = torch.zeros(2, 8, 2)
    frames[..., 0] = 0.1
    frames[0, 5, 0] = frames[1, 2, 0] = -0.1
    frames[..., 1] = torch.tensor([30.0, -10, 5, -5, 8, 0, -8, 2])
    # equal frame weights -> round(0.125 x 8) = 1 token per frame
    kept = vidcom2.vidcom2_keep(frames, retain=0.125)
    assert kept[0].nonzero().squeeze(1).tolist() == [5] and kept[1].nonzero().squeeze(1).tolist() == [2]


def test_vidcom2_keeps_lowest_summed_similarity():
    # one channel (channel_keep 1.0): normalised, every token is +1 or -1. Frame 0: -1 at loc 3; frame 1: -1 at
    # loc 1 and 6. Video mean 10/16 = 0.625; g(x) = sum_a exp(-(x - 0.625)^2 / 2a): g(+1) = 4.091, g(-1) = 0.860.
    # Frame means of g: frame 1 is lower by (4.091 - 0.860) / 8 = 0.404, i.e. 40 temperatures: w ~ [0, 1],
    # budgets round(0.25 (1 + w - 0.5) 8) = [1, 3]. A -1 token is the farthest from both centres: frame 0 keeps
    # loc 3 alone, frame 1 keeps loc 1, loc 6 and one +1 token (a tie: which one is not asserted)
    frames = torch.ones(2, 8, 1)
    frames[0, 3] = frames[1, 1] = frames[1, 6] = -1.0
    kept = vidcom2.vidcom2_keep(frames, retain=0.25, channel_keep=1.0)
    assert kept.sum(1).tolist() == [1, 3]
    assert kept[0].nonzero().squeeze(1).tolist() == [3] and kept[1, 1] and kept[1, 6]
