"""HoliTom (``holitom``): its rules on hand-made tensors (expected numbers worked by hand from the transcription of
upstream in ``prunevid/methods/holitom.py``'s docstring), the inner merge through the shared cut plan on the tiny
model, matched budgets, and the ``flops`` command against HoliTom's published FLOPs."""
import json

import pytest
import torch

import prunevid
from prunevid.harness.cli import main
from prunevid.methods import holitom
from prunevid.methods.resolve import make_config

from conftest import FRAMES, run_patched

N_IN = FRAMES * 49


# ----------------------------------------------------------------------------------------- the outer rules
def test_static_counts_and_windows_by_hand():
    """4 frames, 2 locations; adjacent similarities [[.9, .5], [.9, .9], [.5, .9]] at tau .8: static pairs
    [[1, 0], [1, 1], [0, 1]]. counts[s, e] = (e - s) x locations static through [s, e]:
    [0,1] 1x1, [0,2] 2x1, [0,3] 3x0, [1,2] 1x2, [1,3] 2x1, [2,3] 1x1. DP: dp = [0, 1, 2, 2] with windows
    [0,1] (1 > 0), then [1,2] (0 + 2 > 1; [0,2]'s 2 is not strictly better), then frame 3 alone (2 = 1 + 1 =
    0 + 2: no window is strictly better). Read back: (3,3), (1,2), (0,0)."""
    sim = torch.tensor([[0.9, 0.5], [0.9, 0.9], [0.5, 0.9]])
    counts = holitom.static_counts(sim, 0.8)
    assert counts.tolist() == [[0, 1, 2, 0], [0, 0, 2, 2], [0, 0, 0, 1], [0, 0, 0, 0]]
    assert holitom.select_windows(counts) == ([(0, 0), (1, 2), (3, 3)], 2.0)
    assert holitom.select_windows(counts, max_window=1) == ([(0, 0), (1, 1), (2, 2), (3, 3)], 0.0)
    assert holitom.static_mask(sim, 1, 2, 0.8).tolist() == [True, True]
    assert holitom.static_mask(sim, 3, 3, 0.8).tolist() == [False, False]


def test_ratios_and_counts_by_hand():
    assert holitom.rescaled_ratio(0.25, 8, 2) == pytest.approx(1 / 3)          # 0.25 / (6 / 8)
    assert holitom.rescaled_ratio(0.5, 8, 6) == 1.0                             # capped
    assert holitom.robust_ceil(0.1 * 30) == 3 and holitom.robust_ceil(2.01) == 3
    # S = 5 static, 10 dynamic at r = 0.33: round(1.65) = 2 clusters, ceil(3.3) = 4 per frame
    assert holitom.window_counts(5, 10, 0.33) == (2, 4, 0)
    assert holitom.window_counts(5, 10, 0.33, dominant_share=0.5) == (2, 2, 2)  # round(4 x 0.5) dominant
    assert holitom.inner_keep(35, 0.5) == 18 and holitom.inner_keep(70, 0.5) == 35   # round(17.5) = 18 (even)
    assert holitom.default_tau(0.10) == 0.65 and holitom.default_tau(0.25) == 0.80


def test_density_merge_by_hand():
    """Six 1-D tokens [0, .5, .8, 10, 10.2, 13], 3 clusters, k = min(7, 3) = 3 (self + 2 nearest):
    density exp(-mean d^2) = [.743, .893, .784, .049, .072, .004]; distance to the nearest denser token
    (the peak t1: the largest distance, 13) = [.5, 13, .3, .2, 9.4, 2.8]; scores [.371, 11.6, .235, .010, .680,
    .010] -> centres t1, t4, t0, sorted [0, 1, 4]. t2 joins t1 (.3), t3 and t5 join t4. With beta .6:
    t0 alone stays 0; .6 x .5 + .4 x .8 = .62; .6 x 10.2 + .4 x mean(10, 13) = 10.72."""
    x = torch.tensor([0.0, 0.5, 0.8, 10.0, 10.2, 13.0])[:, None]
    merged, centres, labels = holitom.density_merge(x, 3, k=7, beta=0.6, generator=torch.Generator().manual_seed(0))
    assert centres.tolist() == [0, 1, 4] and labels.tolist() == [0, 1, 1, 2, 2, 2]
    torch.testing.assert_close(merged[:, 0], torch.tensor([0.0, 0.62, 10.72]))


def test_outer_merge_by_hand():
    """3 frames of 2 locations. Location 0 is static through frames 0-1 (cos .995 > .8), nothing else: windows
    [0,1] (removes 1 token) and [2,2]. ratio .5 of 6 -> r' = .5 / (5/6) = .6: the window's static location
    (mean of [1, 0] and [1, .1] = [1, .05], round(.6) = 1 cluster: itself), ceil(.6) = 1 dynamic token per frame
    (its only one), frame 2: ceil(1.2) = 2 (both). ratio .4 -> r' = .48: round(.48) = 0 static, ceil(.48) = 1,
    ceil(.96) = 1 for frame 2: the location with the larger attention (1)."""
    frames = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.1], [1.0, 0.0]], [[-1.0, 0.0], [0.0, -1.0]]])
    attn = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.2, 0.7]])
    res = holitom.holitom_outer(frames, attn, 0.5, 0.8)
    assert res["windows"] == [(0, 1), (2, 2)] and res["reduced"] == 1.0 and res["ratio"] == pytest.approx(0.6)
    torch.testing.assert_close(res["tokens"], torch.tensor([[1.0, 0.05], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0],
                                                            [0.0, -1.0]]))
    assert res["kept"].tolist() == [[True, True], [False, True], [True, True]]
    assert holitom.outer_count([1, 0], [2, 1], 2, 0.5, 6, 1.0) == 5
    res = holitom.holitom_outer(frames, attn, 0.4, 0.8)
    torch.testing.assert_close(res["tokens"], torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, -1.0]]))
    assert holitom.outer_count([1, 0], [2, 1], 2, 0.4, 6, 1.0) == 3


# ----------------------------------------------------------------------------------------- the inner merge
def test_inner_merge_is_upstreams_running_average():
    """kept [0, 3], dropped [1, 2, 4]: h1 = [2, .1] and h2 = [4, 0] are nearest h0 = [1, 0], h4 = [0, 8] nearest
    h3 = [0, 1]. Upstream, one at a time: h0 <- (h0 + h1) / 2 = [1.5, .05]; h0 <- (that + h2) / 2 = [2.75, .025];
    h3 <- (h3 + h4) / 2 = [0, 4.5]. Dropped rows are left as they were."""
    h = torch.tensor([[1.0, 0.0], [2.0, 0.1], [4.0, 0.0], [0.0, 1.0], [0.0, 8.0]])
    out = holitom.inner_merge(h, torch.tensor([0, 3]), torch.tensor([4, 1, 2]))
    torch.testing.assert_close(out, torch.tensor([[2.75, 0.025], [2.0, 0.1], [4.0, 0.0], [0.0, 4.5], [0.0, 8.0]]))


def test_merge_cut_folds_only_visual_tokens():
    """Sequence of 7: text 0, visual 1..4, text 5..6; the cut kept sequence 2 ([1, .2]) and 4 ([.1, 1]). Sequence 1
    ([1, 0]: cos .98 with 2, .10 with 4) merges into 2 -> [1, .1]; sequence 3 ([0, 1]: cos .20 / .995) into 4 ->
    [.05, 1]. Text rows are never candidates and pass unchanged."""
    h = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [1.0, 0.2], [0.0, 1.0], [0.1, 1.0], [5.0, 5.0], [7.0, 7.0]]])
    cut = holitom.HoliTomMergeCut(layer=0, n_keep=2)
    cut.visual = slice(1, 5)
    out = cut.fold(h, torch.tensor([0, 2, 4, 5, 6]))
    # sequence 1 merges into 2, sequence 3 into 4; text rows untouched
    torch.testing.assert_close(out, torch.tensor([[[9.0, 9.0], [1.0, 0.1], [0.05, 1.0], [5.0, 5.0], [7.0, 7.0]]]))
    assert cut.at == "output" and (cut.scoring, cut.query, cut.reduce) == ("rope_causal", "last", "mean")


# ----------------------------------------------------------------------------------------- config, depth, schedule
def test_config_depth_rule_and_errors(tiny):
    model, _ = tiny
    assert make_config("holitom", {}, n_layers=28).inner_layer == 18
    assert make_config("holitom", {}, n_layers=4).inner_layer == 2                # 18 beyond 4 layers: 4 // 2
    assert make_config("holitom", {"inner_layer": 3}, n_layers=4).inner_layer == 3
    assert make_config("holitom", {"ratio": 0.1}).threshold == 0.65
    for bad, match in [({"ratio": 0.0}, "ratio"), ({"inner_ratio": 1.0}, "inner_ratio"), ({"beta": 2}, "beta"),
                       ({"k_neighbors": 0}, "k_neighbors"), ({"inner_layer": 0}, "inner_layer"),
                       ({"retain": 1.5}, "retain")]:
        with pytest.raises(ValueError, match=match):
            make_config("holitom", bad)
    with pytest.raises(ValueError, match="inner_layer=4 does not fit"):
        prunevid.apply(model, method="holitom", inner_layer=4)
    assert not prunevid.is_patched(model)


def test_declared_schedule():
    impl = holitom.HoliTomMethod(holitom.HoliTomConfig())
    s = impl.schedule(28, 0, 6272)                  # 0.25 x 6272 = 1568 enter; layers 18.. on round(784)
    assert s.tokens == [1568.0] * 18 + [784] * 10 and s.kv == s.tokens
    impl = holitom.HoliTomMethod(make_config("holitom", {}, n_layers=4))     # inner layer 2 (the depth rule)
    s = impl.schedule(4, 0, 392, entering=70)
    assert s.tokens == [70, 70, 35, 35]
    impl = holitom.HoliTomMethod(holitom.HoliTomConfig(inner_ratio=0.0))
    assert impl.schedule(4, 0, 392, entering=70).tokens == [70] * 4
    impl = holitom.HoliTomMethod(holitom.HoliTomConfig(retain=0.25))   # 0.25 x 28 / (18 + 0.5 x 10) of N enter
    assert impl.schedule(28, 0, 6272).tokens[0] == pytest.approx(0.25 * 28 / 23 * 6272)


def test_flops_command_matches_holitoms_table(capsys):
    """HoliTom's table (related-methods §3): 25% retained with the inner merge, 7.1 TFLOPs = 17.4% of the
    unpruned prefill (the papers' formula, text excluded)."""
    assert main(["flops", "--preset", "llava-ov-7b", "--method", "holitom", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert round(out["flops_ratio"], 3) == 0.174
    assert out["schedule_visual_plus_text"] == [1568.0] * 18 + [784] * 10


# ----------------------------------------------------------------------------------------- on the tiny model
def _run(model, inputs, **params):
    return run_patched(model, inputs, "holitom", **params)


def test_outer_then_inner_merge_on_the_tiny_model(tiny, tiny_inputs, tiny_ref):
    model, _ = tiny
    _, st, info = _run(model, tiny_inputs)
    e = st["visual_tokens_stage1"]
    rec = info["holitom"]
    assert e < N_IN and rec["inner_layer"] == 2 and rec["inner_kept"] == round(e * 0.5)
    assert st["layer_tokens"] == [e, e, rec["inner_kept"], rec["inner_kept"]]
    assert st["layer_kv_tokens"] == st["layer_tokens"]                # upstream: each layer caches what it ran on
    assert rec["final_kv_ratio"] == rec["inner_kept"] / N_IN
    # "w/o M": every layer on what entered; ratio 1 and no inner merge: the unpatched model
    _, st2, _ = _run(model, tiny_inputs, inner_ratio=0.0)
    assert st2["layer_tokens"] == [e] * 4
    logits, _, _ = _run(model, tiny_inputs, ratio=1.0, inner_ratio=0.0)
    assert torch.equal(logits, tiny_ref)


@pytest.mark.parametrize("retain", [0.1, 0.25, 0.5])
def test_budget_is_the_layer_mean(tiny, tiny_inputs, retain):
    from prunevid.harness import budget
    model, _ = tiny
    rec = budget.run_at_budget(model, tiny_inputs, "holitom", retain, tau=0.95)
    assert rec["reachable"] and abs(rec["achieved"] - retain) <= 0.02, rec
    # the tiny clip is nearly still: at the script's tau the static windows alone leave less than half
    rec = budget.run_at_budget(model, tiny_inputs, "holitom", 0.5)
    assert not rec["reachable"] and "already merge more" in rec["note"]


@pytest.mark.slow
def test_bench_and_flops_on_a_video(capsys):
    from prunevid.video import sample_clip
    assert main(["bench", "--preset", "tiny", "--method", "holitom", "--frames", "4", "--repeats", "1", "--dtype",
                 "float32", "--no-memory", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "holitom" and out["ideal_speedup"] > 1 and out["prefill_speedup"] > 0
    assert abs(out["kv_ratio"] - out["kv_ratio_expected"]) <= 0.01 * out["kv_ratio_expected"]   # per-layer caches
    assert main(["flops", "--video", sample_clip("bikes"), "--model", "tiny", "--frames", "8", "--method", "holitom",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 < out["flops_ratio"] < 1
