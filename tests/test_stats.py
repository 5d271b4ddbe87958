"""Statistics of the results schema and the sweep index (prunevid/statistics.py), on hand-computed cases.

Every expected number below is worked out by hand in the comment beside it (z = 1.959964, the normal's 97.5%
quantile), not produced by running the kit."""
import json
import math

import pytest

from prunevid import benchmarks
from prunevid.harness import report
from prunevid.benchmarks.base import mc_metrics
from prunevid.benchmarks.vcgbench import judge_score_errors, judge_scores
from prunevid.statistics import (accuracy_stderr, compare_paired, holm_adjust, mcnemar_exact_p, mean_interval,
                                 paired_bootstrap_diff, wilson_interval)


# ------------------------------------------------------------------------------------------------ pure functions
def test_accuracy_stderr_is_the_sample_sd_over_root_n_in_points():
    # [1,1,0,0]: mean 0.5, squared deviations 4 x 0.25 = 1, / (n-1) = 1/3, sd 0.57735, / sqrt(4) = 0.288675
    assert accuracy_stderr([1, 1, 0, 0]) == pytest.approx(28.8675, abs=1e-4)
    # 3 of 5: squared deviations 3 x 0.16 + 2 x 0.36 = 1.2, / 4 = 0.3, sd 0.547723, / sqrt(5) = 0.244949
    assert accuracy_stderr([True, False, True, True, False]) == pytest.approx(24.4949, abs=1e-4)
    assert accuracy_stderr([1, 1, 1]) == 0.0                   # no spread
    assert accuracy_stderr([1]) is None and accuracy_stderr([]) is None        # n - 1 = 0


def test_wilson_interval_by_hand():
    # 7/10: z^2/n = 0.384146, denominator 1.384146, centre (0.7 + 0.192073) / 1.384146 = 0.644493,
    # half = z / 1.384146 * sqrt(0.021 + 0.0096036) = 1.416012 * 0.174939 = 0.247717 -> [0.396776, 0.892210]
    low, high = wilson_interval(7, 10)
    assert low == pytest.approx(39.6776, abs=2e-3) and high == pytest.approx(89.2210, abs=2e-3)
    # 0/10: centre 0.192073 / 1.384146 = 0.138766 = half -> [0, 0.277533]
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(27.7533, abs=2e-3)
    # 10/10 mirrors 0/10
    assert wilson_interval(10, 10)[0] == pytest.approx(100 - 27.7533, abs=2e-3)
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_mean_interval_normal_approximation():
    # [1,2,3,4]: mean 2.5, sd sqrt(5/3) = 1.290994, se 0.645497, 1.959964 * se = 1.265151
    mean, se, (low, high) = mean_interval([1, 2, 3, 4])
    assert mean == 2.5 and se == pytest.approx(0.645497, abs=1e-6)
    assert low == pytest.approx(1.234849, abs=1e-5) and high == pytest.approx(3.765151, abs=1e-5)
    assert mean_interval([3.0]) == (3.0, None, None) and mean_interval([]) == (None, None, None)


@pytest.mark.parametrize("b, c, p", [
    (1, 5, 14 / 64),          # n 6: 2 * (C(6,0) + C(6,1)) / 2^6 = 2 * 7 / 64
    (5, 1, 14 / 64),          # two-sided: symmetric
    (0, 6, 2 / 64),           # 2 * C(6,0) / 2^6
    (2, 10, 158 / 4096),      # n 12: 2 * (1 + 12 + 66) / 4096 = 0.0385742
    (3, 3, 1.0),              # 2 * (1 + 6 + 15 + 20) / 64 = 84/64, capped at 1
    (0, 0, 1.0),              # no discordant pair: nothing to test
    (0, 1, 1.0),              # 2 * 1/2
])
def test_mcnemar_exact_p_by_hand(b, c, p):
    assert mcnemar_exact_p(b, c) == pytest.approx(p, rel=1e-12)


def test_mcnemar_exact_p_stays_exact_for_large_counts():
    # 0 vs 200: 2 * C(200, 0) / 2^200 = 2^-199 (about 1.2e-60): exact integers, one rounding
    assert mcnemar_exact_p(0, 200) == pytest.approx(2.0 ** -199, rel=1e-12)


def test_holm_adjust_by_hand():
    # sorted 0.01, 0.03, 0.04 (m = 3): 3 x 0.01 = 0.03; 2 x 0.03 = 0.06; 1 x 0.04 = 0.04 -> max(0.06, 0.04) = 0.06
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # None is not a test: m = 2 here; 2 x 0.01 = 0.02, then max(0.02, 1 x 0.04)
    out = holm_adjust([0.04, None, 0.01])
    assert out[1] is None and out[0] == pytest.approx(0.04) and out[2] == pytest.approx(0.02)
    assert holm_adjust([0.5, 0.6]) == [1.0, 1.0]              # 2 x 0.5 = 1.0 caps, and stays monotone
    assert holm_adjust([]) == []


def test_paired_bootstrap_is_reproducible_and_brackets_the_difference():
    # 20 items right only in a, 80 tied: observed difference 0.2; its bootstrap sd is about
    # sqrt(0.2 * 0.8 / 100) = 0.04, so the 95% interval is about 0.2 +- 0.078
    a = [1] * 20 + [0] * 40 + [1] * 40
    b = [0] * 20 + [0] * 40 + [1] * 40
    diff, (low, high) = paired_bootstrap_diff(a, b)
    assert diff == pytest.approx(0.2)
    assert low < diff < high
    assert low == pytest.approx(0.2 - 0.078, abs=0.02) and high == pytest.approx(0.2 + 0.078, abs=0.02)
    assert paired_bootstrap_diff(a, b) == (diff, [low, high])            # seed 0 by default: same interval
    assert paired_bootstrap_diff(a, b, seed=1)[1] != [low, high]
    assert paired_bootstrap_diff([1, 1, 1], [0, 0, 0]) == (1.0, [1.0, 1.0])   # every resample the same
    with pytest.raises(ValueError):
        paired_bootstrap_diff([1, 0], [1])


def test_compare_paired_counts_discordant_items():
    cell = {"a": True, "b": True, "c": False, "d": True}
    ref = {"a": True, "b": False, "c": False, "d": False}
    c = compare_paired(cell, ref)
    # 3/4 vs 1/4: +50 points; right here and wrong there: b, d (2); the other way: none -> p = 2 * 1/4
    assert c["n"] == 4 and c["diff"] == pytest.approx(50.0) and (c["b"], c["c"]) == (2, 0)
    assert c["p"] == pytest.approx(0.5)
    assert c["diff_ci95"][0] <= 50.0 <= c["diff_ci95"][1]
    with pytest.raises(ValueError, match="different items"):
        compare_paired(cell, {"a": True})


# ------------------------------------------------------------------------------------------------ results schema
def test_mc_metrics_carry_stderr_and_wilson_overall_and_per_category():
    rows = [{"id": str(i), "category": "x" if i < 4 else "y", "answer": "A", "correct": i < 7} for i in range(10)]
    m = mc_metrics(rows)
    assert m["accuracy"] == 70.0
    # 7 of 10: sample var 10/9 * 0.21 = 0.233333, sd 0.483046, / sqrt(10) = 0.152753
    assert m["accuracy_stderr"] == pytest.approx(15.2753, abs=1e-4)
    assert m["accuracy_ci95"] == pytest.approx([39.6776, 89.2210], abs=2e-3)       # Wilson 7/10 (above)
    # x: items 0-3 all right; y: items 4-9, 3 right of 6 (sd sqrt(6/5 * 0.25) = 0.547723, / sqrt(6) = 0.223607)
    assert m["by_category"] == {"x": 100.0, "y": 50.0}
    assert m["by_category_stderr"]["x"] == 0.0 and m["by_category_stderr"]["y"] == pytest.approx(22.3607, abs=1e-4)
    assert m["by_category_ci95"]["y"] == pytest.approx(wilson_interval(3, 6))
    assert set(m["by_category_ci95"]) == set(m["by_category_stderr"]) == {"x", "y"}
    json.dumps(m)                                              # JSON-ready, as results.json needs


def test_benchmark_without_public_answers_gets_no_interval():
    rows = [{"id": "1", "category": "full", "answer": None, "correct": None}]   # EgoSchema's full set
    m = benchmarks.get("egoschema").aggregate(rows)
    assert m["accuracy"] is None and m["accuracy_stderr"] is None and m["accuracy_ci95"] is None
    assert m["by_category_stderr"] == {} and m["by_category_ci95"] == {}


def test_every_multiple_choice_benchmark_aggregates_the_new_fields():
    rows = [{"id": "1", "category": "c", "answer": "A", "correct": True},
            {"id": "2", "category": "c", "answer": "B", "correct": False}]
    for name in ("synthetic", "mvbench", "videomme", "egoschema"):
        m = benchmarks.get(name).aggregate(rows)
        assert {"accuracy_stderr", "accuracy_ci95", "by_category_stderr", "by_category_ci95"} <= set(m), name
        assert m["accuracy_stderr"] == pytest.approx(100 * math.sqrt(0.5) / math.sqrt(2)), name   # sd 0.7071


def test_vcg_scores_get_stderr_and_normal_interval():
    rows = [{"id": "g1", "category": "generic", "judge": {"CI": 4, "DO": 3, "CU": 5}},
            {"id": "g2", "category": "generic", "judge": {"CI": 2, "DO": 3, "CU": 1}},
            {"id": "t1", "category": "temporal", "judge": {"TU": 5}},
            {"id": "t2", "category": "temporal", "judge": {"TU": 3}},
            {"id": "c1", "category": "consistency", "judge": {"CO": 4}},
            {"id": "c2", "category": "consistency", "judge": {"CO": 4}}]
    assert judge_scores(rows)["avg"] == pytest.approx(3.4)      # (3 + 3 + 3 + 4 + 4) / 5
    e = judge_score_errors(rows)
    # CI [4, 2]: sd sqrt(2), se 1.0 -> 3 +- 1.959964; CU [5, 1]: se 2.0; DO and CO: no spread
    assert e["scores_stderr"]["CI"] == pytest.approx(1.0) and e["scores_stderr"]["CU"] == pytest.approx(2.0)
    assert e["scores_stderr"]["DO"] == 0.0 and e["scores_stderr"]["CO"] == 0.0
    assert e["scores_ci95"]["CI"] == pytest.approx([1.040036, 4.959964], abs=1e-6)
    # avg: g = CI + DO + CU per generic item = [12, 6], se 3.0; TU se 1.0; CO 0 -> sqrt(9 + 1 + 0) / 5 = 0.632456
    assert e["scores_stderr"]["avg"] == pytest.approx(math.sqrt(10) / 5)
    assert e["scores_ci95"]["avg"] == pytest.approx([2.160409, 4.639591], abs=1e-6)
    agg = benchmarks.get("vcgbench").aggregate(rows)
    assert agg["scores_ci95"] == e["scores_ci95"] and agg["accuracy_ci95"] is None
    none = benchmarks.get("vcgbench").aggregate([{"id": "g1", "category": "generic"}])    # no judge has run
    assert none["scores"] is None and none["scores_stderr"] is None and none["scores_ci95"] is None


# ------------------------------------------------------------------------------------------------ sweep index
def _cell(out, rid, params, correct, *, ids=None, timing=None):
    """A cell folder written by hand: params.json, results.json (metrics from mc_metrics) and samples.jsonl."""
    from prunevid.harness import results
    ids = ids or [f"q{i}" for i in range(len(correct))]
    rows = [{"id": i, "category": "cat", "prediction": "A", "parsed": "A", "answer": "A", "correct": bool(c),
             "error": None} for i, c in zip(ids, correct)]
    folder = out / "runs" / rid
    w = results.RunWriter(str(folder))
    for r in rows:
        w.append_sample(r)
    (folder / "params.json").write_text(json.dumps(params))
    retained = params.get("retain", 1.0)
    w.write_results(results.base_results(
        run_id=rid, config={"model": "m", "benchmark": "b"},
        method={"name": params["method"], **{k: v for k, v in params.items() if k != "method"}},
        n_samples={"total": len(rows), "done": len(rows), "errors": 0, "unparsed": 0}, metrics=mc_metrics(rows),
        tokens={"retained_ratio": retained}, flops={"ratio_vs_unpruned": retained},
        timing=timing or {"prefill_ms": 123.0}, **results.status_fields(rows, complete=True)))


def test_index_shows_intervals_paired_comparisons_and_no_absolute_time_column(tmp_path):
    out = tmp_path / "sweep"
    _cell(out, "ref", {"method": "none"}, [1] * 40)
    _cell(out, "bad", {"method": "fastv", "retain": 0.25}, [0] * 20 + [1] * 20)       # 20 items lost
    _cell(out, "close", {"method": "visionzip", "retain": 0.25}, [0] + [1] * 39,       # one item lost
          timing={"prefill_ms": 50.0, "prefill_ms_unpruned": 100.0})                 # timed side by side in-cell
    _cell(out, "other", {"method": "random", "retain": 0.1}, [1] * 40, ids=[f"z{i}" for i in range(40)])
    page = open(report.build_index(str(out), title="t")).read()
    rows = {r["run_id"]: r for r in (report._row(x) for x in report.collect(str(out)))}
    report._paired(list(rows.values()), str(out))
    bad, close = rows["bad"]["paired"], rows["close"]["paired"]
    # bad: b = 0, c = 20 -> p = 2 / 2^20; close: b = 0, c = 1 -> p = 1. Holm over the two: 2 x 2^-19, then 1
    assert bad["p"] == pytest.approx(2.0 ** -19) and bad["p_holm"] == pytest.approx(2.0 ** -18)
    assert close["p"] == 1.0 and close["p_holm"] == 1.0
    assert bad["diff"] == pytest.approx(-50.0) and close["diff"] == pytest.approx(-2.5)
    assert bad["verdict"] == "worse than the reference" and close["verdict"] == "not shown different (n = 40)"
    assert rows["ref"]["is_reference"] and rows["other"]["paired"] is None
    assert "different items" in rows["other"]["paired_note"]
    # the page: intervals, the paired columns, one generated sentence per budget, never "equal"
    assert "[91.2, 100.0]" in page                              # Wilson 40/40 (test_wilson_40_of_40_by_hand)
    assert "worse than the reference" in page and "not shown different (n = 40)" in page
    assert ("retain 25% (target): worse than unpruned (Holm-adjusted exact McNemar p &lt; 0.05): fastv "
            "(-50.0 points") in page
    assert "not shown different from unpruned (n = 40): visionzip (-2.5 points" in page
    assert "retain 10% (target): not compared (scored other items than the reference): random." in page
    assert "equal" not in page.lower()
    # speed: no absolute-ms column; the in-cell side-by-side ratio is shown where a cell measured one
    assert "prefill ms" not in page and ">123<" not in page
    assert "prefill speed-up (in-cell)" in page and "2×" in page and rows["close"]["speedup"] == 2.0
    # error bars: each plotted point carries its Wilson interval
    pts = {p[2]: p for panel in report.plot_panels(list(rows.values()), "retained") for s in panel["series"]
           for p in s["points"]}
    assert pts["bad"][3] == pytest.approx(wilson_interval(20, 40))


def test_ranking_compares_every_pair_of_a_budget_with_holm_and_names_what_is_resolved(tmp_path):
    """Issue 24: the cells of one retain target ranked, every pair paired on the same items, Holm over the pairs."""
    out = tmp_path / "sweep"
    _cell(out, "ref", {"method": "none"}, [1] * 60)
    _cell(out, "a", {"method": "oracle", "retain": 0.25}, [1] * 60)
    _cell(out, "b", {"method": "visionzip", "retain": 0.25}, [0] * 20 + [1] * 40)
    _cell(out, "c", {"method": "random", "retain": 0.25}, [0] * 22 + [1] * 38)
    _cell(out, "d", {"method": "fastv", "retain": 0.25}, [1] * 60, ids=[f"z{i}" for i in range(60)])
    _cell(out, "e", {"method": "vidcom2", "retain": 0.1}, [1] * 60)             # alone at its target: no ranking
    rows = [report._row(x) for x in report.collect(str(out))]
    groups = report.rankings(rows, str(out))
    assert len(groups) == 1 and (groups[0]["kind"], groups[0]["budget"]) == ("retain", 0.25)
    g = groups[0]
    assert [r["run_id"] for r in g["cells"]] == ["a", "b", "c"]
    assert set(g["unranked"]) == {"fastv"} and "other items" in g["unranked"]["fastv"]
    ab, ac, bc = g["pairs"][(0, 1)], g["pairs"][(0, 2)], g["pairs"][(1, 2)]
    # discordant: a-b 20 / 0, a-c 22 / 0, b-c 0 / 2 -> p 2^-19, 2^-21, 0.5; Holm (3 tests) 2^-18, 3 x 2^-21, 0.5
    assert (ab["b"], ab["c"], ac["b"], ac["c"], bc["b"], bc["c"]) == (20, 0, 22, 0, 2, 0)
    assert ab["p_holm"] == pytest.approx(2.0 ** -18) and ac["p_holm"] == pytest.approx(3 * 2.0 ** -21)
    assert bc["p_holm"] == pytest.approx(0.5)
    assert ab["resolved"] and ac["resolved"] and not bc["resolved"]
    assert ab["diff"] == pytest.approx(100 / 3) and bc["diff"] == pytest.approx(100 * 2 / 60)
    assert "diff_ci95" in ab and "diff_ci95" in bc and "diff_ci95" not in ac      # neighbours get the interval
    page = open(report.build_index(str(out), title="t")).read()
    assert "Ranking at each budget" in page and "retain 25% (target), 60 items" in page
    assert "not resolved" in page and "2 of 2" in page and "fastv: scored other items than the ranked cells" in page


def test_wilson_40_of_40_by_hand():
    # z^2/n = 0.0960365; centre (1 + 0.0480183) / 1.0960365 = 0.956192; half = 1.959964 / 1.0960365 *
    # sqrt(0 + 3.841459 / 6400) = 1.788230 * 0.0244992 = 0.0438102 -> low 0.912382
    assert wilson_interval(40, 40)[0] == pytest.approx(91.2382, abs=2e-3)


def test_index_from_older_results_derives_wilson_from_counts():
    metrics = {"accuracy": 70.0, "n_scored": 10, "by_category_counts": {"x": {"correct": 7, "total": 10}}}
    assert report._score_interval(metrics) == pytest.approx(wilson_interval(7, 10))
    assert report._category_intervals(metrics)["x"] == pytest.approx(wilson_interval(7, 10))
    assert report._in_cell_speedup({"prefill_ms": 10.0}) is None         # an absolute time alone is no ratio
    assert report._in_cell_speedup({"prefill_speedup": 1.5}) == 1.5
