"""Stage 1 rules of prunevid-method.md §1, pinned."""
import itertools

import pytest
import torch

from prunevid.merge import (cluster_means, dpc_knn, merge_video_tokens, refine_segments, segment_lengths,
                            spatial_merge, static_mask, static_similarity)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- DPC-KNN
def _reference_dpc(x, n_clusters, k, noise):
    """Loop-by-loop reading of the DPC-KNN rule, for comparison."""
    n, c = x.shape
    d = [[float(torch.dist(x[i], x[j])) / c ** 0.5 for j in range(n)] for i in range(n)]
    rho = []
    for i in range(n):
        nearest = sorted(d[i])[:min(k, n)]
        rho.append(float(torch.tensor(-sum(v * v for v in nearest) / len(nearest)).exp()) + float(noise[i]) * 1e-6)
    dmax = max(max(r) for r in d)
    delta = [min([d[i][j] for j in range(n) if rho[j] > rho[i]] or [dmax]) for i in range(n)]
    score = [delta[i] * rho[i] for i in range(n)]
    centers = sorted(range(n), key=lambda i: -score[i])[:n_clusters]
    labels = [min(range(n_clusters), key=lambda cc: (d[centers[cc]][i], cc)) for i in range(n)]
    for rank, ci in enumerate(centers):
        labels[ci] = rank
    return labels, centers


@pytest.mark.parametrize("n,n_clusters,k", [(20, 4, 7), (15, 7, 7), (9, 3, 20), (5, 5, 2)])
def test_dpc_knn_matches_the_rule(n, n_clusters, k):
    x = torch.randn(n, 6, generator=gen(n))
    labels, centers = dpc_knn(x, n_clusters, k, generator=gen(1), return_centers=True)
    noise = torch.rand(n, generator=gen(1))
    ref_labels, ref_centers = _reference_dpc(x.double(), n_clusters, k, noise)
    assert centers.tolist() == ref_centers
    assert labels.tolist() == ref_labels


def test_dpc_knn_properties():
    x = torch.cat([torch.randn(10, 4) * 0.1 + 5, torch.randn(10, 4) * 0.1 - 5, torch.randn(10, 4) * 0.1])
    labels, centers = dpc_knn(x, 3, 7, generator=gen(), return_centers=True)
    assert labels.min() >= 0 and labels.max() < 3
    assert labels[centers].tolist() == [0, 1, 2]                 # each centre carries its own rank
    assert sorted(torch.bincount(labels).tolist()) == [10, 10, 10]   # the three blobs are found, none empty
    again = dpc_knn(x, 3, 7, generator=gen())
    assert torch.equal(labels, again)                            # deterministic with a seeded generator


def test_dpc_knn_rejects_bad_cluster_counts():
    with pytest.raises(ValueError, match="n_clusters"):
        dpc_knn(torch.randn(4, 2), 5, 7)
    with pytest.raises(ValueError, match="n_clusters"):
        dpc_knn(torch.randn(4, 2), 0, 7)


def test_cluster_means_are_member_means():
    x = torch.randn(12, 5)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 2, 2, 2])
    m = cluster_means(x, labels, 3)
    for c in range(3):
        assert torch.allclose(m[c], x[labels == c].mean(0), atol=1e-6)


# ---------------------------------------------------------------------------------------------- segments
@pytest.mark.parametrize("labels,expected", [
    ([0, 0, 1, 0, 0], [0, 0, 0, 0, 0]),                      # the singleton 1 is absorbed
    ([0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 0, 0]),                # all singletons dissolve -> label 0 (no neighbours)
    ([0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0]),                # tied longest runs of 0 are both kept
    ([0, 0, 2, 1, 1], [0, 0, 0, 1, 1]),                      # a tie between neighbours goes left
    ([0, 0, 0, 2, 1, 1], [0, 0, 0, 0, 1, 1]),                # longer left neighbour wins
    ([0, 0, 2, 1, 1, 1], [0, 0, 1, 1, 1, 1]),                # longer right neighbour wins
    ([1, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1]),                # 1's shorter run at the start -> right neighbour
    ([3, 3, 3, 3], [3, 3, 3, 3]),
])
def test_refine_segments_table(labels, expected):
    assert refine_segments(torch.tensor(labels)).tolist() == expected


def test_refine_segments_uses_the_updated_left_run():
    # The singleton 2 is reassigned first; then the run of 3 (length 1, dissolved) sees a left run of
    # length 3 (0,0 plus the reassigned frame) against a right run of length 2.
    assert refine_segments(torch.tensor([0, 0, 2, 3, 1, 1])).tolist() == [0, 0, 0, 0, 1, 1]


def test_segment_lengths():
    assert segment_lengths(torch.tensor([4, 4, 1, 1, 1, 4])) == [2, 3, 1]


# ---------------------------------------------------------------------------------------------- static
@pytest.mark.parametrize("w", [2, 4, 16])
def test_static_similarity_is_mean_over_ordered_pairs(w):
    seg = torch.randn(w, 9, 8, generator=gen(w), dtype=torch.float64)
    sim = static_similarity(seg)
    xn = torch.nn.functional.normalize(seg, dim=-1)
    ref = torch.stack([torch.stack([xn[a, l] @ xn[b, l] for a, b in itertools.permutations(range(w), 2)]).mean()
                       for l in range(9)])
    assert torch.allclose(sim, ref, atol=1e-10)


def test_static_threshold_is_strict():
    seg = torch.randn(3, 6, 4, dtype=torch.float64)
    sim = static_similarity(seg)
    tau = float(sim[2])
    mask = static_mask(seg, tau)
    assert not mask[2] and torch.equal(mask, sim > tau)


def test_one_frame_segment_has_no_static_tokens():
    assert not static_mask(torch.randn(1, 5, 3), -1.0).any()


# ---------------------------------------------------------------------------------------------- merging
def test_spatial_merge_threshold_14():
    t14 = torch.randn(14, 4)
    out, lab = spatial_merge(t14, 0.5, 7, gen(), 14)
    assert torch.equal(out, t14) and lab.tolist() == list(range(14))     # <= 14: passed through, raster order
    t15 = torch.randn(15, 4)
    out, lab = spatial_merge(t15, 0.5, 7, gen(), 14)
    assert out.shape == (7, 4) and lab.max() == 6                          # int(15 * 0.5) clusters


def _video(t=8, side=7, c=16, static_locations=30, seed=0):
    """Frames where ``static_locations`` raster locations never change and the others are noise."""
    g = gen(seed)
    frames = torch.randn(t, side * side, c, generator=g)
    frames[:, :static_locations] = torch.randn(1, static_locations, c, generator=g)
    return frames


@pytest.mark.parametrize("t,static_locations,ratio", [(8, 30, 0.25), (8, 0, 0.25), (8, 49, 0.25), (4, 20, 0.25),
                                                        (16, 10, 0.5), (3, 25, 0.25), (1, 10, 0.25)])
def test_merge_video_tokens_bookkeeping_and_provenance(t, static_locations, ratio):
    frames = _video(t=t, static_locations=static_locations)
    res = merge_video_tokens(frames, tau=0.8, temporal_segment_ratio=ratio, cluster_ratio=0.5, k=7, generator=gen())
    assert sum(res.window_sizes) == t
    assert res.num_tokens == sum(s + d for s, d in zip(res.static_sizes, res.dynamic_sizes))
    for s, d, w, mask in zip(res.static_sizes, res.dynamic_sizes, res.window_sizes, res.static_masks):
        ns, nd = int(mask.sum()), int((~mask).sum())
        assert s == (ns if ns <= 14 else int(ns * 0.5))
        assert d == w * (nd if nd <= 14 else int(nd * 0.5))
    # Every input token went to exactly one output token, and each output is the mean of its sources.
    assert res.assignment.min() >= 0 and res.assignment.max() == res.num_tokens - 1
    for row in range(res.num_tokens):
        src = res.sources(row)
        assert torch.allclose(res.tokens[row], frames[src[:, 0], src[:, 1]].mean(0), atol=1e-5)


def test_static_locations_are_found_and_output_order_is_static_then_frames():
    frames = _video(t=8, static_locations=30)
    res = merge_video_tokens(frames, tau=0.8, temporal_segment_ratio=0.125, cluster_ratio=0.5, generator=gen())
    assert res.window_sizes == [8]                           # int(8 * 0.125) = 1 cluster -> one segment
    assert res.static_masks[0][:30].all() and not res.static_masks[0][30:].any()
    s = res.static_sizes[0]
    assert s == 15 and res.dynamic_sizes[0] == 8 * 9
    assert (res.assignment[:, :30] < s).all()                          # static rows first
    for f in range(8):                                                 # then frame f's dynamic rows, in order
        rows = res.assignment[f, 30:]
        assert rows.min() == s + 9 * f and rows.max() == s + 9 * f + 8


def test_empty_groups_are_explicit():
    all_static = merge_video_tokens(_video(static_locations=49), tau=0.8, temporal_segment_ratio=0.125,
                                    cluster_ratio=0.5, generator=gen())
    assert all_static.dynamic_sizes == [0] and all_static.static_sizes == [24]
    none_static = merge_video_tokens(_video(static_locations=0), tau=0.8, temporal_segment_ratio=0.125,
                                     cluster_ratio=0.5, generator=gen())
    assert none_static.static_sizes == [0] and none_static.dynamic_sizes == [8 * 24]


def test_generator_makes_stage1_deterministic():
    frames = _video(t=16, static_locations=25, seed=3)
    a = merge_video_tokens(frames, tau=0.8, temporal_segment_ratio=0.25, cluster_ratio=0.5, generator=gen(5))
    b = merge_video_tokens(frames, tau=0.8, temporal_segment_ratio=0.25, cluster_ratio=0.5, generator=gen(5))
    assert torch.equal(a.tokens, b.tokens) and a.window_sizes == b.window_sizes


def test_bfloat16_frames_keep_their_dtype():
    frames = _video(t=4, static_locations=20).bfloat16()
    res = merge_video_tokens(frames, tau=0.8, temporal_segment_ratio=0.25, cluster_ratio=0.5, generator=gen())
    assert res.tokens.dtype == torch.bfloat16
