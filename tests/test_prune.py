"""Stage 2 rules of prunevid-method.md §2, pinned."""
import pytest
import torch

from prunevid.prune import kept_count, select_tokens, visual_token_scores


def test_select_tokens_floor_topk_per_group():
    # segment 0: 5 static tokens, 2 frames x 3 dynamic; segment 1: no static, 3 frames x 2 dynamic
    scores = torch.tensor([.1, .9, .5, .3, .7,   .2, .8, .1,  .6, .3, .9,   .5, .4,  .1, .2,  .9, .8])
    keep = select_tokens(scores, [5, 0], [6, 6], [2, 3], alpha=0.5)
    # static floor(2.5)=2 -> {1, 4}; dynamic floor(1.5)=1 per frame -> {6}, {10}; segment 1: floor(1)=1 -> {11},{14},{15}
    assert keep.tolist() == [1, 4, 6, 10, 11, 14, 15]
    assert kept_count([5, 0], [6, 6], [2, 3], 0.5) == 7


def test_select_tokens_is_sorted_and_handles_empty_groups():
    scores = torch.rand(12)
    keep = select_tokens(scores, [0, 4], [8, 0], [2, 3], alpha=0.4)
    assert keep.tolist() == sorted(keep.tolist())
    assert keep.numel() == kept_count([0, 4], [8, 0], [2, 3], 0.4) == 2 * 1 + 1
    assert select_tokens(torch.rand(3), [1], [2], [2], alpha=0.4).numel() == 0     # floors to nothing


def test_select_tokens_alpha_one_keeps_everything():
    assert select_tokens(torch.rand(10), [4], [6], [3], alpha=1.0).tolist() == list(range(10))


def test_select_tokens_validates_layout():
    with pytest.raises(ValueError, match="shape"):
        select_tokens(torch.rand(9), [4], [6], [3], 0.4)
    with pytest.raises(ValueError, match="multiple"):
        select_tokens(torch.rand(10), [4], [6], [4], 0.4)
    with pytest.raises(ValueError, match="alpha"):
        select_tokens(torch.rand(10), [4], [6], [3], 0.0)


def test_official_score_is_unmasked_softmax_max_over_heads_then_queries():
    g = torch.Generator().manual_seed(0)
    h, n, d = 3, 12, 8
    q_all, k = torch.randn(h, n, d, generator=g), torch.randn(h, n, d, generator=g)
    vis, q_start = slice(2, 8), 9
    full = torch.softmax(q_all @ k.transpose(1, 2) / d ** 0.5, dim=-1)             # (H, N, N), no mask
    ref = full[:, q_start:, 2:8].max(dim=0).values.max(dim=0).values
    got = visual_token_scores(q_all[:, q_start:], k, vis, scaling=d ** -0.5)
    assert torch.allclose(got, ref, atol=1e-6)
    mean = visual_token_scores(q_all[:, q_start:], k, vis, scaling=d ** -0.5, reduce="mean")
    assert torch.allclose(mean, full[:, q_start:, 2:8].mean(dim=(0, 1)), atol=1e-6)


def test_causal_variant_normalises_over_earlier_tokens_only():
    g = torch.Generator().manual_seed(1)
    h, n, d = 2, 10, 4
    q_all, k = torch.randn(h, n, d, generator=g), torch.randn(h, n, d, generator=g)
    logits = q_all @ k.transpose(1, 2) / d ** 0.5
    logits = logits.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    ref = torch.softmax(logits, -1)[:, 7:, 1:5].amax(dim=(0, 1))
    got = visual_token_scores(q_all[:, 7:], k, slice(1, 5), scaling=d ** -0.5, query_positions=torch.arange(7, n))
    assert torch.allclose(got, ref, atol=1e-6)


def test_scores_cast_to_model_dtype_like_the_official_code():
    q, k = torch.randn(2, 3, 4), torch.randn(2, 6, 4)
    s = visual_token_scores(q, k, slice(0, 4), scaling=0.5, out_dtype=torch.bfloat16)
    assert s.dtype == torch.bfloat16
