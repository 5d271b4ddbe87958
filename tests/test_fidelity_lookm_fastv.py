"""Look-M and FastV against their authors' code, rule by rule, on small hand-made tensors.

Look-M: SUSTechBruce/LOOK-M, LLaVA-mix_merge_v1/llava/model/kv_token_merge/modify_llama.py
(TextPivotMerge_LayerWise, TextAVGMergeKVCache_LayerWise, TextWeightedMerge_LayerWise). FastV:
pkunlp-icler/FastV, src/transformers/src/transformers/models/llama/modeling_llama.py (inplace variant) and
src/FastV/lmms-eval/fastv_kvcache.py (KV-cache variant). Expected numbers are worked out by hand from those
rules (comments show the arithmetic).
"""
import math

import pytest
import torch

import prunevid
from prunevid.methods import fastv, lookm
from prunevid.methods.lookm import LookMCachePolicy, kv_head_scores, lookm_keep, lookm_sizes, merge_evicted

from conftest import FRAMES

P = 49
N_IN = FRAMES * P


# -- Look-M: sizes --------------------------------------------------------------------------------------------
def test_lookm_sizes_are_int_of_the_whole_sequence():
    # upstream: hh_size = int(k_len * hh_ratio), recent_size = int(k_len * recent_ratio), k_len = every entry
    assert lookm_sizes(439, 392, 0.1, 0.1) == (43, 43)                   # int(43.9) each
    assert lookm_sizes(100, 80, 0.29, 0.1) == (28, 10)                   # 0.29 * 100 = 28.999999999999996 -> 28
    assert lookm_sizes(100, 80, 0.2, 0.05) == (20, 5)


def test_lookm_retain_splits_in_upstream_proportion():
    # 439 entries, 392 visual, 47 text; retain 0.25: 47 + floor(98.0) = 145 entries, recent floor(145/2) = 72
    assert lookm_sizes(439, 392, 0.1, 0.1, retain=0.25) == (73, 72)
    # retain 0.1: 47 + 39 = 86 -> 43 heavy hitters (not 0 as the kit's old hh = retain - recent gave)
    assert lookm_sizes(439, 392, 0.1, 0.1, retain=0.1) == (43, 43)
    # hh : recent = 2 : 1 -> recent = floor(44 / 3) = 14 of 20 + floor(0.3 * 80) = 44
    assert lookm_sizes(100, 80, 0.2, 0.1, retain=0.3) == (30, 14)
    # named option ratios_of="visual": floor(retain * N_v) visual entries, text on top
    assert lookm_sizes(439, 392, 0.1, 0.1, ratios_of="visual", retain=0.1) == (20, 19)
    assert lookm_sizes(439, 392, 0.1, 0.1, ratios_of="visual") == (39, 39)
    with pytest.raises(ValueError, match="at least one"):
        lookm.LookMConfig(hh_ratio=0.0, recent_ratio=0.0, retain=0.2)
    with pytest.raises(ValueError, match="ratios_of"):
        lookm.LookMConfig(ratios_of="text")


# -- Look-M: selection ----------------------------------------------------------------------------------------
def test_lookm_keep_per_head_with_text_prior():
    # 10 entries: text 0, 1 (before the video) and 9 (after); visual 2..8. hh = 4, recent = 2 -> window {8, 9}
    protected = torch.tensor([True, True] + [False] * 7 + [True])
    scores = torch.tensor([[0.5, 0.1, 3.0, 1.0, 7.0, 2.0, 6.0, 0.0, 9.0, 9.0],
                           [0.5, 0.1, 5.0, 8.0, 1.0, 2.0, 0.0, 4.0, 0.0, 0.0]])
    kept = lookm_keep(scores, n_heavy=4, n_recent=2, protected=protected)
    # text 0 and 1 rank above every visual entry (upstream: image scores - 65516) and take 2 of the 4 slots;
    # the other 2 go to each head's own top visual entries: head 0 -> 4 (7.0), 6 (6.0); head 1 -> 3 (8.0), 2 (5.0)
    assert kept.tolist() == [[0, 1, 4, 6, 8, 9], [0, 1, 2, 3, 8, 9]]
    # fewer slots than old text: no visual heavy hitter at all, only text + window (max(hh, 2) + 2 entries)
    assert lookm_keep(scores, n_heavy=1, n_recent=2, protected=protected).tolist() == [[0, 1, 8, 9]] * 2
    # an empty window (upstream's [:, :-0] slices are empty and its top-k fails): the 3 text entries take 3
    # of the 4 slots, the 4th goes to the top visual entry: head 0 -> 8 (9.0), head 1 -> 3 (8.0)
    assert lookm_keep(scores, n_heavy=4, n_recent=0, protected=protected).tolist() == [[0, 1, 8, 9],
                                                                                         [0, 1, 3, 9]]


def test_kv_head_scores_sum_each_group():
    # 4 query heads over 2 KV heads: query heads 0, 1 read KV head 0; 2, 3 read KV head 1 (repeat_kv)
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 20.0], [30.0, 40.0]])
    assert kv_head_scores(s, 2).tolist() == [[4.0, 6.0], [40.0, 60.0]]
    assert torch.equal(kv_head_scores(s, 4), s)                        # MHA (upstream's LLaVA-1.5): identity


def test_policy_select_both_bases():
    scores = torch.tensor([[0.5, 0.1, 3.0, 1.0, 7.0, 2.0, 6.0, 0.0, 9.0, 9.0]])
    upstream = LookMCachePolicy(slice(2, 9), n_heavy=4, n_recent=2, merge="none", block=4)
    assert upstream.select(scores).tolist() == [[0, 1, 4, 6, 8, 9]]
    # ratios_of="visual": window = last 2 visual (7, 8), heavy = top 2 of visual 2..6 (4, 6), text 0, 1, 9 on top
    visual = LookMCachePolicy(slice(2, 9), n_heavy=2, n_recent=2, merge="none", block=4, ratios_of="visual")
    assert visual.select(scores).tolist() == [[0, 1, 4, 6, 7, 8, 9]]


# -- Look-M: merges -------------------------------------------------------------------------------------------
def test_pivotal_merge_is_scatter_mean_of_pairs_per_head():
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 2.0], [3.0, 0.0]],      # head 0: keeps 0, 1
                         [[2.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.0, 1.0]]])     # head 1: keeps 1, 3
    values = torch.tensor([[[10.0], [20.0], [30.0], [40.0]], [[1.0], [2.0], [3.0], [4.0]]])
    kept, evicted = torch.tensor([[0, 1], [1, 3]]), torch.tensor([[2, 3], [0, 2]])
    k, v = merge_evicted(keys, values, kept, evicted, "pivotal", block=1)
    # head 0: 3 -> slot 0 (cos 1), 2 -> slot 1. slot 0: mean([1,0], ([3,0]+[1,0])/2) = [1.5, 0];
    # value mean(10, (40+10)/2) = 17.5. slot 1: mean([0,1], [0,1.5]) = [0, 1.25]; value mean(20, 25) = 22.5
    # head 1: 0 -> slot 0 (entry 1), 2 -> slot 1 (entry 3). slot 0: mean([1,0], [1.5,0]) = [1.25, 0];
    # value mean(2, 1.5) = 1.75. slot 1: mean([0,1], [0,2]) = [0, 1.5]; value mean(4, 3.5) = 3.75
    torch.testing.assert_close(k, torch.tensor([[[1.5, 0.0], [0.0, 1.25]], [[1.25, 0.0], [0.0, 1.5]]]))
    torch.testing.assert_close(v, torch.tensor([[[17.5], [22.5]], [[1.75], [3.75]]]))


def test_pivotal_merge_two_into_one():
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.8, 0.0]]])
    values = torch.tensor([[[1.0], [2.0], [3.0], [5.0]]])
    k, v = merge_evicted(keys, values, torch.tensor([0, 1]), torch.tensor([2, 3]), "pivotal")
    # both go to entry 0: mean(1, (3+1)/2, (5+1)/2) = 2 (the kit's old (kept + mean(evicted))/2 gave 2.5)
    assert v[0, :, 0].tolist() == [pytest.approx(2.0), 2.0]
    # keys: mean([1,0], [0.95,0.05], [0.9,0]) = [0.95, 0.05/3]
    torch.testing.assert_close(k[0, 0], torch.tensor([0.95, 0.05 / 3]))


def test_average_and_weighted_merge_filter_and_weights():
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 2.0], [3.0, 1.0]]])
    values = torch.tensor([[[10.0], [20.0], [30.0], [40.0], [60.0]]])
    kept, evicted = torch.tensor([0, 1]), torch.tensor([2, 3, 4])
    # best cosines: entry 2 -> 1/sqrt(2) (tie, first max: slot 0), entry 3 -> 2/sqrt(5) (slot 1),
    # entry 4 -> 3/sqrt(10) (slot 0); mean 0.8834: entry 2 (0.7071) is not merged
    c3, c4 = 2 / math.sqrt(5), 3 / math.sqrt(10)
    k, v = merge_evicted(keys, values, kept, evicted, "average")
    torch.testing.assert_close(k[0], torch.tensor([[2.0, 0.5], [0.5, 1.5]]))        # mean([1,0],[3,1]) ...
    torch.testing.assert_close(v[0, :, 0], torch.tensor([35.0, 30.0]))              # mean(10, 60), mean(20, 40)
    k, v = merge_evicted(keys, values, kept, evicted, "weighted")
    torch.testing.assert_close(k[0], torch.tensor([[(1 + 3 * c4) / 2, c4 / 2], [c3 / 2, (1 + 2 * c3) / 2]]))
    torch.testing.assert_close(v[0, :, 0], torch.tensor([(10 + 60 * c4) / 2, (20 + 40 * c3) / 2]))
    k, v = merge_evicted(keys, values, kept, evicted, "none")
    assert v[0, :, 0].tolist() == [10.0, 20.0]


def test_average_filter_averages_slots_over_heads():
    # one kept key [1, 0] per head; evicted best cosines: head 0 [1.0, 0.5], head 1 [0.2, 0.9]
    # slot means [0.6, 0.7] vs overall mean 0.65: slot 0 is skipped in BOTH heads (head 0's is an exact match)
    def unit(c):
        return [c, math.sqrt(1 - c * c)]
    keys = torch.tensor([[[1.0, 0.0], unit(1.0), unit(0.5)], [[1.0, 0.0], unit(0.2), unit(0.9)]])
    values = torch.tensor([[[0.0], [10.0], [20.0]], [[0.0], [30.0], [50.0]]])
    k, v = merge_evicted(keys, values, torch.tensor([0]), torch.tensor([1, 2]), "average")
    assert v[:, 0, 0].tolist() == [pytest.approx(10.0), pytest.approx(25.0)]     # mean(0, 20), mean(0, 50)
    torch.testing.assert_close(k[:, 0], torch.tensor([[0.75, math.sqrt(0.75) / 2],
                                                      [0.95, math.sqrt(0.19) / 2]]))


# -- Look-M on the tiny model: per-head caches decode ---------------------------------------------------------
def test_lookm_per_head_sets_decode(tiny, tiny_inputs, monkeypatch):
    """Force the two KV heads to keep different visual entries (the tiny random model's H2O scores pick the
    same early entries in both heads): the cache stays rectangular, generate runs, kept_map is the union."""
    model, _ = tiny
    real = LookMCachePolicy.select

    def disjoint(self, scores):
        row0 = real(self, scores)[0]
        n = scores.shape[1]
        vis = torch.zeros(n, dtype=torch.bool)
        vis[self.visual] = True
        in0 = torch.zeros(n, dtype=torch.bool)
        in0[row0] = True
        others = (vis & ~in0).nonzero().squeeze(1)[:int(vis[row0].sum())]       # as many visual, none shared
        row1 = torch.cat([(~vis).nonzero().squeeze(1), others]).sort().values
        return torch.stack([row0, row1])

    monkeypatch.setattr(LookMCachePolicy, "select", disjoint)
    prunevid.apply(model, method="lookm")
    try:
        with torch.no_grad():
            out = model.generate(**tiny_inputs, max_new_tokens=3, do_sample=False)
            st = prunevid.stats(model)
            km = prunevid.methods.kept_map(model)
            kept = prunevid.state.cache_policy(model).kept_positions()
    finally:
        prunevid.remove(model)
    assert out.shape[1] == tiny_inputs["input_ids"].shape[1] + 3
    assert kept.shape == (2, st["text_tokens"] + st["kv_visual_tokens"])
    assert not torch.equal(kept[0], kept[1])
    assert int(km.sum()) == 2 * st["kv_visual_tokens"]                           # disjoint visual sets


def test_lookm_default_counts_on_tiny(tiny, tiny_inputs):
    model, _ = tiny
    prunevid.apply(model, method="lookm", retain=0.25)
    try:
        with torch.no_grad():
            model(**tiny_inputs)
        st = prunevid.stats(model)
        info = prunevid.patch.info(model)
    finally:
        prunevid.remove(model)
    assert (info["kv_heavy"], info["kv_recent"]) == (73, 72)                      # 47 text + 98 visual, 1:1
    assert st["kv_visual_tokens"] == 98                                           # floor(0.25 * 392)


# -- FastV ----------------------------------------------------------------------------------------------------
def test_fastv_positions_cache_and_decode(tiny, tiny_inputs):
    """Kept tokens keep their RoPE positions (upstream: position_ids = keep_indexs); every layer's cache holds
    the kept entries (the kit's documented choice; upstream's KV-cache variant keeps all of layers 0..K-1);
    decoding continues at position N (upstream: past length of layer 0, the full prompt)."""
    model, _ = tiny
    lm = model.model.language_model
    K = 2
    seen = []

    def grab(module, args, kwargs):
        seen.append(kwargs["position_embeddings"][0].clone())

    prunevid.apply(model, method="fastv", K=K)
    handle = lm.layers[K].register_forward_pre_hook(grab, with_kwargs=True)     # runs after the pruner's hook
    try:
        with torch.no_grad():
            out = model(**tiny_inputs, use_cache=True)
            plan = prunevid.state.last_plan(model)
            cache = getattr(out, "cache", None) or out.past_key_values
            n = tiny_inputs["input_ids"].shape[1]
            model.generate(**tiny_inputs, max_new_tokens=2, do_sample=False)
    finally:
        handle.remove()
        prunevid.remove(model)
    x = torch.zeros(1, 1, model.config.text_config.hidden_size)
    cos_keep, _ = lm.rotary_emb(x, plan.keep[None])
    torch.testing.assert_close(seen[0], cos_keep)
    assert {layer.get_seq_length() for layer in cache.layers} == {plan.keep.numel()}
    assert plan.keep.numel() == n - N_IN + fastv.fastv_keep_count(N_IN, 0.5)
    cos_n, _ = lm.rotary_emb(x, torch.tensor([[n]]))                             # second generate step
    torch.testing.assert_close(seen[-1], cos_n)
