"""FrameFusion (``framefusion``): its rules on hand-made tensors (expected numbers worked by hand from the
transcription of upstream in ``prunevid/methods/framefusion.py``'s docstring), the cascade of cuts without a model,
then on the tiny model: declared schedule, matched budgets (the cost rule's layer mean), the no-op, errors, and the
``flops`` command."""
import json

import pytest
import torch

import prunevid
from prunevid.harness.cli import main
from prunevid.methods import framefusion as ff
from prunevid.methods.resolve import make_config

from conftest import FRAMES, run_patched

N_IN = FRAMES * 49

# 3 frames x 2 locations, D = 2, in sequence (frame-major) order; patch types 0, 1, 0, 1, 0, 1.
H = torch.tensor([[1.0, 0.0], [0.0, 1.0],        # frame 0
                  [3.0, 0.0], [1.0, 1.0],        # frame 1
                  [0.0, 2.0], [2.0, 2.0]])       # frame 2
PATCH = torch.tensor([0, 1, 0, 1, 0, 1])


# ----------------------------------------------------------------------------------------- kernel steps by hand
def test_adjacent_similarity_by_hand():
    """Patch order: location 0's tokens 0, 2, 4, then location 1's 1, 3, 5. Similarities with the previous token
    of the same location: token 2 vs 0: [3,0].[1,0] / (3 x 1) = 1; token 4 vs 2: 0; token 3 vs 1:
    1 / sqrt(2) = .7071; token 5 vs 3: 4 / (sqrt(8) sqrt(2)) = 1; the first of each location: -2."""
    sim, order = ff.adjacent_similarity(H, PATCH)
    assert order.tolist() == [0, 2, 4, 1, 3, 5]
    torch.testing.assert_close(sim, torch.tensor([-2.0, 1.0, 0.0, -2.0, 0.5 ** 0.5, 1.0]))


def test_merge_decision_by_hand():
    sim = torch.tensor([-2.0, 1.0, 0.0, -2.0, 0.7071, 1.0])
    # S_th .6: positions 1, 4, 5 -> share 3 / 6 = .5, below the bound .7: the threshold branch
    pos, share, kind = ff.merge_decision(sim, 0.6, 0.7)
    assert pos.tolist() == [1, 4, 5] and share == 0.5 and kind == "threshold"
    # bound .4 <= .5: the budget branch, int(.4 x 6) = 2 most similar (the two 1.0s)
    pos, share, kind = ff.merge_decision(sim, 0.6, 0.4)
    assert pos.tolist() == [1, 5] and kind == "budget"
    # a bound asking for more than the 4 positions with a predecessor takes those 4 (never a first-of-location)
    assert ff.budget_positions(sim, 0.9).tolist() == [1, 2, 4, 5]


def test_merge_runs_by_hand():
    """Merging positions 1, 4, 5 of the patch order [0, 2, 4, 1, 3, 5]: run {1} -> anchor position 0 (token 0):
    ([1,0] + [3,0]) / 2 = [2, 0]; run {4, 5} -> anchor position 3 (token 1): ([0,1] + [1,1] + [2,2]) / 3 =
    [1, 4/3]. Tokens 2, 3, 5 leave; token 4 stays [0, 2]."""
    _, order = ff.adjacent_similarity(H, PATCH)
    out, keep = ff.merge_runs(H, order, torch.tensor([1, 4, 5]))
    assert keep.tolist() == [True, True, False, False, True, False]
    torch.testing.assert_close(out[keep], torch.tensor([[2.0, 0.0], [1.0, 4 / 3], [0.0, 2.0]]))
    # nothing to merge: unchanged
    out, keep = ff.merge_runs(H, order, torch.zeros(0, dtype=torch.long))
    assert keep.all() and torch.equal(out, H)
    with pytest.raises(ValueError, match="no anchor"):
        ff.merge_runs(H, order, torch.tensor([0]))


def test_pruning_ratio_by_hand():
    """Upstream's cost rule, L = 4, cost .3 (L x cost = 1.2): no step yet: 1 - 1.2 / 4 = .7; after a = .5:
    s = .5, R = .7, 1 - .7 / (3 x .5) = .5333; after .5, .2: s = .4, R = 1.2 - .9 = .3, 1 - .3 / (2 x .4) = .625.
    cost .9 after .5: R = 3.1 > 3 x .5: 0 (nothing to prune). cost .1 after .1: R = .4 - .9 < 0: the error."""
    assert ff.pruning_ratio([], 0.3, 4) == pytest.approx(0.7)
    assert ff.pruning_ratio([0.5], 0.3, 4) == pytest.approx(1 - 0.7 / 1.5)
    assert ff.pruning_ratio([0.5, 0.2], 0.3, 4) == pytest.approx(0.625)
    assert ff.pruning_ratio([0.5], 0.9, 4) == 0.0
    assert ff.pruning_ratio([], 1.0, 4) == 0.0                  # cost 1: the no-op
    assert ff.pruning_ratio([], 0.3, 28) == pytest.approx(0.7)  # upstream's hard-coded 28 layers
    with pytest.raises(ValueError, match="too small"):
        ff.pruning_ratio([0.1], 0.1, 4)
    assert ff.layer_profile(4, 10, [[0, 8, "threshold"], [2, 3, "prune"]]) == [8, 8, 3, 3]


# ----------------------------------------------------------------------------------------- the cascade, no model
def _cascade(n_layers, cost, bound, lower=0.1):
    """Text token, the 6 visual tokens of H, text token: (hidden (1, 8, 2), state, cuts)."""
    hidden = torch.cat([torch.zeros(1, 2), H, torch.ones(1, 2)])[None]
    st = ff.FrameFusionState(patch=PATCH.clone(), n_layers=n_layers, cost=cost, similarity_lower_bound=bound,
                             ratio_lower_bound=lower, n_in=6)
    cuts = [ff.FrameFusionCut(layer=i, n_keep=0, state=st) for i in range(n_layers)]
    return hidden, st, cuts


def test_cascade_merges_then_stops_by_hand():
    """L = 2, cost .3, S_th .6. Layer 0: share .5 < bound .7 (and the next step stays affordable: R = .6 - .5),
    tokens 2, 3, 5 merge (``test_merge_runs_by_hand``) -> 3 visual tokens, patch types [0, 1, 0]. Layer 1: token 4
    ([0,2]) against token 0 ([2,0]): cosine 0, share 0 < .1: merging stops; layer 1 is the last, no pruning."""
    hidden, st, cuts = _cascade(2, 0.3, 0.6)
    kept = cuts[0].choose(None, hidden, {}, slice(1, 7), 7)
    assert kept.tolist() == [0, 1, 4]
    keep = torch.cat([torch.tensor([0]), 1 + kept, torch.tensor([7])])
    folded = cuts[0].fold(hidden, keep)
    torch.testing.assert_close(folded[0], torch.tensor([[0, 0], [2, 0], [1, 4 / 3], [0, 2], [1, 1]]))
    assert st.patch.tolist() == [0, 1, 0] and st.sparsities == [0.5]
    assert cuts[1].choose(None, folded, {}, slice(1, 4), 4) is None            # nothing merged: no cut
    assert st.phase == "done" and st.sparsities == [0.5, 0.0]
    assert st.record["steps"] == [[0, 3, "threshold"], [1, 3, "threshold"]]
    assert st.record["layer_mean_ratio"] == 0.5 and st.record["final_kv_ratio"] == 0.5


def test_cascade_takes_the_budget_branch_where_upstream_would_raise():
    """L = 2, cost .3, S_th .8: tokens 2 and 5 (similarity 1) -> share 1/3 < .7, but then s = 2/3 > L x cost = .6:
    upstream's next step raises "The cost is too small"; the kit merges int(.7 x 6) = 4 -> capped at the 4
    positions with a predecessor: runs {1, 2} into token 0 ([1,0] + [3,0] + [0,2]) / 3 and {4, 5} into token 1."""
    hidden, st, cuts = _cascade(2, 0.3, 0.8)
    kept = cuts[0].choose(None, hidden, {}, slice(1, 7), 7)
    assert kept.tolist() == [0, 1] and st.phase == "done"
    assert st.record["steps"] == [[0, 2, "ceiling"]]
    keep = torch.cat([torch.tensor([0]), 1 + kept, torch.tensor([7])])
    torch.testing.assert_close(cuts[0].fold(hidden, keep)[0, 1:3], torch.tensor([[4 / 3, 2 / 3], [1, 4 / 3]]))
    assert cuts[1].choose(None, hidden, {}, slice(1, 3), 3) is None            # finished


# ----------------------------------------------------------------------------------------- config and schedule
def test_config_errors_and_schedule():
    for bad, match in [({"cost": 0.0}, "cost"), ({"cost": 1.5}, "cost"), ({"similarity_lower_bound": 2}, "similarity"),
                       ({"ratio_lower_bound": -0.1}, "ratio_lower_bound"), ({"retain": 0}, "retain")]:
        with pytest.raises(ValueError, match=match):
            make_config("framefusion", bad)
    impl = ff.FrameFusionMethod(make_config("framefusion", {}))
    assert impl.enabled and impl.schedule(28, 0, 6272).tokens == [0.3 * 6272] * 28       # analytic: cost x N flat
    s = impl.schedule(4, 20, 392, steps=[[0, 300, "threshold"], [1, 250, "threshold"], [2, 40, "prune"]])
    assert s.tokens == s.kv == [300, 250, 40, 40]
    assert ff.FrameFusionMethod(make_config("framefusion", {"retain": 0.2})).schedule(4, 0, 100).tokens == [20.0] * 4
    off = ff.FrameFusionMethod(make_config("framefusion", {"cost": 1.0}))
    assert not off.enabled and off.schedule(4, 0, 392).tokens == [392] * 4


def test_flops_command(capsys):
    """LLaVA-OneVision-7B, 32 x 196 visual tokens, the analytic profile: every layer on 0.3 x 6272 = 1881.6; the
    papers' formula (linear terms at .3, the quadratic at .09) gives a ratio just below .3."""
    assert main(["flops", "--preset", "llava-ov-7b", "--method", "framefusion", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["schedule_visual_plus_text"] == [pytest.approx(1881.6)] * 28
    assert 0.25 < out["flops_ratio"] < 0.3


# ----------------------------------------------------------------------------------------- on the tiny model
def _run(model, inputs, **params):
    return run_patched(model, inputs, "framefusion", **params)


def test_cascade_on_the_tiny_model(tiny, tiny_inputs, tiny_ref):
    model, _ = tiny
    impl_cfg = make_config("framefusion", {})
    for params in ({}, {"similarity_lower_bound": 0.95}, {"similarity_lower_bound": 1.0}):
        _, st, info = _run(model, tiny_inputs, **params)
        rec = info["framefusion"]
        assert st["layer_tokens"] == st["layer_kv_tokens"]                   # each layer caches what it ran on
        assert st["layer_tokens"] == ff.layer_profile(4, N_IN, rec["steps"])
        assert st["visual_tokens_stage2"] == st["kv_visual_tokens"] == rec["steps"][-1][1]
        assert rec["layer_mean_ratio"] == pytest.approx(sum(st["layer_tokens"]) / (4 * N_IN))
        assert abs(rec["layer_mean_ratio"] - impl_cfg.cost) <= 0.02, (params, rec)
        prune = [s for s in rec["steps"] if s[2] == "prune"]
        if prune:                                  # round(N' (1 - p)), p from the sparsities of the merging steps
            before = [s[1] for s in rec["steps"] if s[0] < prune[0][0]]
            n = before[-1] if before else N_IN
            p = ff.pruning_ratio(rec["sparsities"], 0.3, 4)
            assert prune[0][1] == round(n * (1 - p)) and rec["pruning_ratio"] == p
    # at S_th 1 nothing merges at layer 0: share 0 < .1; layer 0 ran on all N, so the pruning step at layer 1 keeps
    # round(N (1 - p)), p = 1 - (1.2 - 1) / 3 (the three layers left carry .2 of the 1.2 layers' budget): 26
    _, st, info = _run(model, tiny_inputs, similarity_lower_bound=1.0)
    assert round(N_IN * (0.2 / 3)) == 26
    assert info["framefusion"]["steps"] == [[0, N_IN, "threshold"], [1, 26, "prune"]]
    assert st["layer_tokens"] == [N_IN, 26, 26, 26]
    logits, st, _ = _run(model, tiny_inputs, cost=1.0)
    assert torch.equal(logits, tiny_ref) and st["layer_tokens"] == [N_IN] * 4


@pytest.mark.parametrize("retain", [0.15, 0.25, 0.5])
def test_budget_is_the_layer_mean(tiny, tiny_inputs, retain):
    from prunevid.harness import budget
    model, _ = tiny
    rec = budget.run_at_budget(model, tiny_inputs, "framefusion", retain)
    assert rec["reachable"] and abs(rec["achieved"] - retain) <= 0.02, rec
    st = rec["stats"]
    assert rec["achieved"] == sum(st["layer_tokens"]) / (4 * N_IN)


def test_eager_attention_and_generate(tiny_eager, tiny_inputs):
    """Eager attention (a 4-D mask, sliced to each layer's own cache at the decode steps) prefill and decode."""
    model, _ = tiny_eager
    prunevid.apply(model, method="framefusion")
    try:
        with torch.no_grad():
            first = model(**tiny_inputs).logits[:, -1].argmax(-1)
            st = prunevid.stats(model)
            out = model.generate(**tiny_inputs, max_new_tokens=3, do_sample=False)
    finally:
        prunevid.remove(model)
    assert st["layer_tokens"] == st["layer_kv_tokens"] and st["layer_tokens"][-1] < N_IN
    assert out[0, tiny_inputs["input_ids"].shape[1]] == first[0]


def test_pruning_ranks_by_the_last_rows_attention(tiny, tiny_inputs):
    """S_th 1: nothing merges at layer 0 (share 0 < .1), so layer 0's input is the whole sequence and the pruning
    step at layer 1 keeps the 26 visual tokens the last row of layer 0's attention (RoPE, causal, mean over heads)
    pays most: the same scores as ``score_at_layer`` on layer 0's input."""
    from prunevid import models, state
    from prunevid.layer_pruner import score_at_layer
    from prunevid.prune import top_k_sorted
    model, _ = tiny
    layer0 = models.spec_for(model).module.language_layers(model)[0]
    seen = {}
    def capture(module, args, kwargs):    # the first call, the prefill: layer 0 unchanged (its step merged nothing)
        seen.setdefault("in", (args[0] if args else kwargs["hidden_states"], kwargs.get("position_embeddings")))

    handle = layer0.register_forward_pre_hook(capture, with_kwargs=True)
    prunevid.apply(model, method="framefusion", similarity_lower_bound=1.0)
    try:
        with torch.no_grad():
            model(**tiny_inputs)
        plan = state.get(model).last_plan
    finally:
        prunevid.remove(model)
        handle.remove()
    hidden, pe = seen["in"]
    vs = plan.visual_start
    ref = score_at_layer(layer0, hidden, slice(vs, vs + N_IN), vs + N_IN + 1, scoring="rope_causal", reduce="mean",
                         position_embeddings=pe, query="last").to(hidden.dtype)
    assert torch.equal(plan.scores, ref)
    kept = plan.keep[(plan.keep >= vs) & (plan.keep < vs + N_IN)] - vs
    assert torch.equal(kept.cpu(), top_k_sorted(ref, 26).cpu())
