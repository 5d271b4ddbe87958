"""Each method's selection rule pinned on small hand-made tensors."""
import numpy as np
import pytest
import torch

from prunevid.layer_pruner import get_cache, query_rows
from prunevid.methods import dycoke, fastv, lookm, prumerge, random_keep, vidcom2, visionzip
from prunevid.methods.prunevid_method import alpha_for_budget
from prunevid.prune import attention_column_sums, count_for_ratio, kept_count, top_k_sorted, visual_token_scores


# -- shared helpers --------------------------------------------------------------------------------------------
def test_count_for_ratio_is_robust_floor():
    assert count_for_ratio(0.25, 196) == 49
    assert count_for_ratio(0.3, 10) == 3           # 0.3 * 10 = 2.9999999999999996 in floats
    assert count_for_ratio(0.7, 49) == 34


def test_attention_column_sums_blockwise_equals_full():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 7, 4, generator=g), torch.randn(2, 7, 4, generator=g)
    full = (q @ k.transpose(-1, -2) * 0.5).softmax(-1).sum(1)
    torch.testing.assert_close(attention_column_sums(q, k, scaling=0.5, block=3), full)
    pos = torch.arange(7)
    causal = (q @ k.transpose(-1, -2) * 0.5).masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(attention_column_sums(q, k, scaling=0.5, query_positions=pos, block=2),
                               causal.softmax(-1).sum(1))


def test_query_rows():
    assert query_rows(10, 7, "after_video").tolist() == [7, 8, 9]
    assert query_rows(10, 7, "last").tolist() == [9]
    assert query_rows(4, 7, "all").tolist() == [0, 1, 2, 3]


def test_get_cache_both_names():
    assert get_cache({"cache": 1}) == 1                 # transformers >= 5.24
    assert get_cache({"past_key_values": 2}) == 2       # transformers 5.23


# -- FastV -----------------------------------------------------------------------------------------------------
def test_fastv_keeps_top_by_last_row_attention():
    # 2 heads, 6 tokens (visual 1..4), query = last row; keys chosen so head-mean attention ranks 3 > 1 > 4 > 2
    k = torch.zeros(2, 6, 2)
    k[:, 3, 0], k[:, 1, 0], k[:, 4, 0], k[:, 2, 0] = 3.0, 2.0, 1.0, -1.0
    q = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])                         # (H, 1, d)
    scores = visual_token_scores(q, k, slice(1, 5), scaling=1.0, reduce="mean")
    assert scores.argsort(descending=True).tolist() == [2, 0, 3, 1]        # visual 3, 1, 4, 2
    n_keep = fastv.fastv_keep_count(4, 0.5)
    assert n_keep == 2
    assert top_k_sorted(scores, n_keep).tolist() == [0, 2]                 # visual tokens 1 and 3, in order


def test_fastv_config():
    assert fastv.FastVConfig.layer_fields == {"K": 2} and fastv.FastVConfig().R == 0.5 and fastv.FastVConfig().score == "last"
    assert fastv.FastVConfig(retain=0.25).drop_ratio == 0.75
    with pytest.raises(ValueError):
        fastv.FastVConfig(score="first")


# -- random ----------------------------------------------------------------------------------------------------
def test_random_keep_is_seeded_sorted_and_sized():
    a = random_keep.random_keep(100, 25, torch.Generator().manual_seed(3))
    b = random_keep.random_keep(100, 25, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.numel() == 25 and a.unique().numel() == 25
    assert torch.equal(a, a.sort().values)


# -- VisionZip -------------------------------------------------------------------------------------------------
def test_visionzip_dominant_and_contextual():
    tokens = torch.arange(8, dtype=torch.float32)[:, None].repeat(1, 2)      # token j = [j, j]
    importance = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.0, 0.0, 0.0, 0.0])
    keys = torch.tensor([[1.0, 0], [1, 0], [1, 0], [1, 0], [1, 0], [0, 1], [1, 0], [0, 1]])
    out, labels = visionzip.visionzip_frame(tokens, importance, keys, n_dominant=2, n_contextual=2)
    # dominant: tokens 1 and 3 (raster order); remaining 0,2,4,5,6,7 -> step 3 -> targets 0 and 5
    assert out[:2, 0].tolist() == [1.0, 3.0]
    # keys: 2, 4, 6 are like target 0; 7 is like target 5; contextual = target + mean(assigned) (upstream)
    assert out[2, 0].item() == pytest.approx(0 + (2 + 4 + 6) / 3)
    assert out[3, 0].item() == pytest.approx(5 + 7 / 1)
    assert labels.tolist() == [2, 0, 2, 1, 2, 3, 2, 3]
    assert visionzip.split_counts(49, 54 / 64) == (41, 8)
    assert visionzip.split_counts(12, 54 / 64) == (10, 2)


# -- DyCoke ----------------------------------------------------------------------------------------------------
def test_dycoke_window_pairs():
    # upstream's pass 2 runs over range(0, F - 4, 4): at 8 frames only the first window's frame 2 is compared
    assert dycoke.ttm_pairs(8) == [(1, 0), (2, 0), (3, 2), (5, 4), (7, 6)]
    assert dycoke.ttm_pairs(6) == [(1, 0), (2, 0), (3, 2), (5, 4)]


def test_dycoke_ttm_keeps_least_similar_tokens():
    g = torch.Generator().manual_seed(0)
    f0 = torch.randn(4, 3, generator=g)
    frames = f0[None].repeat(4, 1, 1)
    frames[1, 2] = -f0[2]                 # frame 1 differs from frame 0 at position 2
    frames[2, 0] = -f0[0]                 # frame 2 differs from frame 0 at position 0
    frames[3] = frames[2]
    frames[3, 3] = -f0[3]                 # frame 3 differs from frame 2 at position 3
    kept = dycoke.dycoke_ttm_keep(frames, merge_ratio=0.75)                 # keep int(0.25 * 4) = 1
    assert kept[0].all()
    assert kept[1].nonzero().squeeze(1).tolist() == [2]
    assert kept[2].all()                  # 4 frames: upstream's pass 2 (range(0, 0, 4)) compares no frame 2
    assert kept[3].nonzero().squeeze(1).tolist() == [3]


def test_dycoke_retention_and_budget():
    frames = torch.randn(8, 196, 4)
    kept = dycoke.dycoke_ttm_keep(frames, 0.7)
    assert int(kept.sum()) == 3 * 196 + 5 * 58                              # frames 0, 4, 6 whole: 56 %
    # the least it keeps is whole / F = 3/8 here (K = 1): checked per video, not by the config
    assert dycoke.merge_ratio_for_retain(0.375, 8, 196)[1:] == (0, True)
    assert dycoke.merge_ratio_for_retain(0.25, 8, 196)[1:] == (0, False)
    assert dycoke.DyCokeConfig(retain=0.1).retain == 0.1


def test_dycoke_reselection_rule():
    a = torch.tensor([1.0, 0.0, 0.0])
    assert dycoke.attention_changed(None, a, 0.9)
    assert not dycoke.attention_changed(a, 2 * a, 0.9)                     # same direction: keep the selection
    assert dycoke.attention_changed(a, torch.tensor([0.0, 1.0, 0.0]), 0.9)


# -- VidCom2 ---------------------------------------------------------------------------------------------------
def test_vidcom2_similarity_and_budgets():
    x = torch.zeros(3)
    assert vidcom2.multiscale_similarity(x, x).item() == pytest.approx(len(vidcom2.ALPHAS))
    # equal frame scores -> every frame gets retain * P
    assert vidcom2.frame_budgets(torch.ones(4), 0.25, 40).tolist() == [10, 10, 10, 10]
    # the frame least similar to the video gets the larger budget
    b = vidcom2.frame_budgets(torch.tensor([1.0, 1.0, 0.99, 1.0]), 0.25, 40)
    assert b[2] > b[0] and b[0] == b[1] == b[3]


def test_vidcom2_keeps_distinctive_tokens():
    g = torch.Generator().manual_seed(0)
    frames = 0.01 * torch.randn(2, 8, 6, generator=g) + torch.tensor([1.0, 1, 1, 1, 1, 1])
    frames[0, 5] = torch.tensor([-1.0, 1, -1, 1, -1, 1])                   # an outlier token
    frames[1, 2] = torch.tensor([1.0, -1, 1, -1, 1, -1])
    kept = vidcom2.vidcom2_keep(frames, retain=0.125, channel_keep=1.0)
    assert kept[0, 5] and kept[1, 2]


# -- PruMerge --------------------------------------------------------------------------------------------------
def test_prumerge_iqr_threshold():
    imp = torch.tensor([1.0, 1, 1, 1, 1, 1, 1, 10])
    assert prumerge.iqr_outliers(imp).nonzero().squeeze(1).tolist() == [7]
    x = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 5.0, 0.35, 3.0])
    q1, q3 = np.percentile(x.numpy(), [25, 75])
    expected = (x.numpy() > q3 + 1.5 * (q3 - q1)).nonzero()[0].tolist()
    assert prumerge.iqr_outliers(x).nonzero().squeeze(1).tolist() == expected == [7, 9]
    assert prumerge.iqr_outliers(torch.ones(5)).nonzero().squeeze(1).tolist() == []    # no outlier: none (upstream)


def test_prumerge_plus_spatial_samples_and_merge():
    # the kit's fixed-count option (retain=): evenly spaced over the unselected 0..6 until 3 are kept
    plus = prumerge.spatial_samples(torch.tensor([7]), 8, 1 / 8, n_total=3)
    assert plus.tolist() == [0, 6]
    # upstream's adaptive stride: ratio 1/8 -> int(int(8) / 3) = 2 -> arange(0, 7, 2), 7 already selected
    assert prumerge.spatial_samples(torch.tensor([7]), 8, 1 / 8).tolist() == [0, 2, 4, 6]
    tokens = torch.eye(4)
    imp = torch.tensor([0.5, 0.1, 0.2, 0.2])
    keys = torch.tensor([[1.0, 0], [1, 0.1], [0, 1], [0.1, 1]])
    kept = torch.tensor([True, False, True, False])
    out = prumerge.knn_merge(tokens, imp, keys, kept, k_neighbors=1, summary_token=True)
    # token 0 absorbs token 1 (weight 0.1), token 2 absorbs token 3 (weight 0.2), summary = 0.1 x1 + 0.2 x3 (a sum)
    torch.testing.assert_close(out[0], torch.tensor([1.0, 0.1, 0, 0]))
    torch.testing.assert_close(out[1], torch.tensor([0, 0, 1.0, 0.2]))
    torch.testing.assert_close(out[2], torch.tensor([0, 0.1, 0, 0.2]))


# -- Look-M ----------------------------------------------------------------------------------------------------
def test_lookm_keep_rule():
    # one head, nothing protected (the kit's ratios_of="visual" rule on the visual scores)
    scores = torch.tensor([5.0, 0.0, 4.0, 1.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    # recent window: the last 2 visual entries (8, 9); heavy hitters: top 2 of the others (4, 0)
    assert lookm.lookm_keep(scores, n_heavy=2, n_recent=2).sort().values.tolist() == [0, 4, 8, 9]
    # upstream's text prior: protected entries 1 and 3 stay and, outside the window, use up heavy-hitter slots
    protected = torch.tensor([False, True, False, True] + [False] * 6)
    assert lookm.lookm_keep(scores, n_heavy=3, n_recent=2, protected=protected).tolist() == [1, 3, 4, 8, 9]


def test_lookm_pivotal_and_average_merge():
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.8, 0.0]]])   # (Hkv=1, 4, 2)
    values = torch.tensor([[[1.0], [2.0], [3.0], [5.0]]])
    kept, evicted = torch.tensor([0, 1]), torch.tensor([2, 3])               # both evicted resemble entry 0
    k, v = lookm.merge_evicted(keys, values, kept, evicted, "pivotal", block=1)
    # upstream: scatter_reduce(mean, include_self) of (x_e + x_kept)/2: mean(1, (3+1)/2, (5+1)/2)
    assert v[0, :, 0].tolist() == [pytest.approx(2.0), 2.0]
    k, v = lookm.merge_evicted(keys, values, kept, evicted, "average")
    # best cosines 0.9939 (entry 2) and 1.0 (entry 3), mean 0.997: only entry 3 is merged: mean(1, 5)
    assert v[0, :, 0].tolist() == [pytest.approx(3.0), 2.0]
    k, v = lookm.merge_evicted(keys, values, kept, evicted, "none")
    assert v[0, :, 0].tolist() == [1.0, 2.0]


def test_lookm_budget_ratios():
    # 100 entries, 80 visual, 20 text: upstream int(N x ratio) of the whole sequence
    assert lookm.LookMConfig().sizes(100, 80) == (10, 10)
    # retain: 20 text + floor(retain x 80) visual entries, split 1:1 as hh_ratio : recent_ratio
    assert lookm.LookMConfig(retain=0.25).sizes(100, 80) == (20, 20)
    assert lookm.LookMConfig(retain=0.05).sizes(100, 80) == (12, 12)
    # the kit's earlier rule, now the named option: ratios of the visual entries
    assert lookm.LookMConfig(ratios_of="visual").sizes(100, 80) == (8, 8)
    assert lookm.LookMConfig(ratios_of="visual", retain=0.25).sizes(100, 80) == (10, 10)


# -- PruneVid budget search ------------------------------------------------------------------------------------
def test_prunevid_alpha_search():
    static, dynamic, windows = [10, 4], [2 * 20, 3 * 10], [2, 3]
    n_in = 100
    alpha, kept, ok = alpha_for_budget(static, dynamic, windows, int(0.25 * n_in))
    assert ok and kept <= 25 and kept == kept_count(static, dynamic, windows, alpha)
    assert kept_count(static, dynamic, windows, alpha + 0.001) > 25 or alpha == 1.0
    # stage 1 already below the target: unreachable from alpha
    alpha, kept, ok = alpha_for_budget([2], [2], [1], 10)
    assert alpha == 1.0 and kept == 4 and not ok
