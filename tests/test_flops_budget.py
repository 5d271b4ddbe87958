"""Matched compute (issue 24, item 4): a target LLM prefill FLOPs ratio solved into each method's ``retain`` on its
declared schedule (``prunevid.harness.budget``), checked against real prefills' records, through the runner's
``--flops`` into results.json, and into the report's matched-FLOPs section."""
import glob
import json
import math
import os

import pytest
import torch

import fixtures
import prunevid
from prunevid import methods, models, state, video
from prunevid.harness import budget, cli, flops, report, results, runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = ["tiny", "tiny-llava-next-video", "tiny-pllava", "tiny-qwen2.5-vl"]
# every method with a retain knob, and the settings that make it act on a 4-layer tiny model at 8 frames; PruneVid
# with stage1_min_ratio lets enough tokens into the LLM that its in-LLM cut has a range to solve in
KNOBBED = {"random": {}, "visionzip": {}, "vidcom2": {}, "prumerge+": {}, "dycoke": {"L": 1}, "oracle": {},
           "fastv": {"K": 1}, "prunevid": {"selected_layer": 1, "stage1_min_ratio": 0.6}}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models are fastest on one thread, and far more so on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", params=ARCHS)
def arch(request):
    loaded = models.load(request.param)
    frames = video.load_video(video.sample_clip("bikes"), 8)
    return loaded, video.build_inputs(loaded, frames, "What happens in the video?")


def _skip_unsupported(loaded, method):
    if method in ("visionzip", "prumerge+") and loaded.name.startswith("tiny-qwen"):
        pytest.skip("the kit does not extract Qwen2-VL's vision attention (a documented limit)")


def _shape_counts_config(loaded, inputs, method):
    """(shape, n_visual, n_text, the method's config as a run resolves it with retain 1.0 standing in for the
    target, the stage-1 count where the schedule needs one) for one prompt."""
    model = loaded.model
    prunevid.apply(model, method=method, **KNOBBED[method], retain=1.0)
    try:
        cfg = state.active_config(model)
        n_visual, n_text = budget.prompt_counts(model, inputs)
        entering = None
        if method == "prunevid":                         # what its stage 1 lets in: the probe at the smallest budget
            prunevid.apply(model, cfg.replace(retain=1.0 / n_visual), method=method)
            entering = budget.probe_entering(model, inputs)
    finally:
        prunevid.remove(model)
    return flops.LLMShape.from_config(model.config), n_visual, n_text, cfg, entering


def _declared(shape, method, cfg, retain, n_visual, n_text, entering):
    """The paper-formula ratio of the declared schedule at ``retain``, computed independently of the solver."""
    sched = flops.method_schedule(method, shape.layers, n_visual, n_text=n_text, config=cfg.replace(retain=retain),
                                  entering=entering)
    seq = [t + n_text for t in sched.tokens]
    return (flops.llm_prefill_macs(shape, seq, formula="paper")
            / flops.llm_prefill_macs(shape, [n_visual + n_text] * shape.layers, formula="paper"))


# ------------------------------------------------------------------------------------------ the solve, declared
@pytest.mark.parametrize("method", sorted(KNOBBED))
def test_solver_hits_the_target_on_the_declared_schedule(arch, method):
    loaded, inputs = arch
    shape, n_visual, n_text, cfg, entering = _shape_counts_config(loaded, inputs, method)
    probe = budget.solve_flops(shape, method, 1.0, n_visual, n_text, config=cfg, entering=entering)
    floor, ceiling = probe["floor"], probe["ceiling"]
    assert 0 < floor < ceiling <= 1.0 + 1e-12
    assert floor == pytest.approx(_declared(shape, method, cfg, 1 / n_visual, n_visual, n_text, entering))
    for share in (0.2, 0.5, 0.8):                         # targets inside the range the schedule spans
        target = floor + share * (ceiling - floor)
        rec = budget.solve_flops(shape, method, target, n_visual, n_text, config=cfg, entering=entering)
        assert rec["reachable"] and rec["note"] is None, rec
        r = rec["retain"]
        declared = _declared(shape, method, cfg, r, n_visual, n_text, entering)
        assert rec["predicted"] == pytest.approx(declared, abs=1e-12)
        # FastV rounds its kept count down (a staircase): within the ratio of one visual token; the others are
        # continuous in retain and land on the target
        step = (_declared(shape, method, cfg, min(1.0, r + 1 / n_visual), n_visual, n_text, entering)
                - _declared(shape, method, cfg, max(1 / n_visual, r - 1 / n_visual), n_visual, n_text, entering))
        tol = step if method == "fastv" else 1e-9
        assert abs(rec["predicted"] - target) <= tol + 1e-12, (method, target, rec["predicted"], tol)


def test_fastv_solve_by_hand():
    """FastV at K on L layers, all N visual + t text tokens: (K f(N + t) + (L - K) f(k + t)) / (L f(N + t)) with
    f(n) = 4nd^2 + 2n^2 d + 2ndm. On d 4, m 8, L 4, K 2, N 100, t 4, keeping k = 48 gives 0.6494...; the solve at that
    ratio keeps 48 (retain 0.48)."""
    shape = flops.LLMShape(hidden=4, layers=4, heads=1, ffn=8)

    def f(n):
        return 4 * n * 16 + 2 * n * n * 4 + 2 * n * 4 * 8
    target = (2 * f(104) + 2 * f(52)) / (4 * f(104))
    rec = budget.solve_flops(shape, "fastv", target, 100, 4, params={"K": 2})
    assert rec["reachable"] and math.floor(rec["retain"] * 100 + 1e-9) == 48
    assert rec["predicted"] == pytest.approx(target, abs=1e-12)
    assert rec["floor"] == pytest.approx((2 * f(104) + 2 * f(5)) / (4 * f(104)))     # one token kept after K
    assert rec["ceiling"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ through a prefill
def _frames_seen(loaded, inputs) -> int:
    prunevid.apply(loaded.model, method="random")
    try:
        with torch.no_grad():
            loaded.model(**inputs)
        return int(methods.kept_map(loaded.model).shape[0])
    finally:
        prunevid.remove(loaded.model)


@pytest.mark.parametrize("method", sorted(set(KNOBBED) - {"oracle"}))      # the oracle's masks: tests/test_oracle.py
def test_achieved_equals_target_through_a_real_prefill(arch, method):
    loaded, inputs = arch
    _skip_unsupported(loaded, method)
    shape, n_visual, n_text, cfg, entering = _shape_counts_config(loaded, inputs, method)
    # the target: what the declared schedule costs at half the visual tokens (above DyCoke's whole frames, below
    # where VidCom2's per-frame budgets saturate at a whole frame and keep less than asked)
    target = _declared(shape, method, cfg, 0.5, n_visual, n_text, entering)
    rec = budget.run_at_flops(loaded.model, inputs, method, target, **KNOBBED[method])
    assert not prunevid.is_patched(loaded.model)
    st = rec["stats"]
    assert rec["reachable"] and rec["note"] is None, rec
    # the counts the solve read off input_ids are the ones the prefill recorded; the achieved ratio is the record's
    assert (rec["solve"]["n_visual"], rec["solve"]["n_text"]) == (st["visual_tokens_in"], st["text_tokens"])
    assert rec["achieved"] == flops.flops_ratio_of_run(shape, st, formula="paper")
    if method == "prunevid":                             # the probe saw the stage 1 the prefill ran
        assert st["visual_tokens_stage1"] == rec["solve"]["entering"]
    # the methods count per frame (floor(retain x P), a summary token) or per group (PruneVid's alpha): the
    # achieved ratio lies within the FLOPs of one visual token per frame of the target (FastV: exactly its record)
    per_frame = _frames_seen(loaded, inputs)
    r = rec["retain"]
    tol = (_declared(shape, method, cfg, min(1.0, r + per_frame / n_visual), n_visual, n_text, entering)
           - _declared(shape, method, cfg, r, n_visual, n_text, entering))
    if method == "prunevid":                             # alpha floors each stage-1 group: one token per group
        groups = len(st.get("static_tokens") or []) + len(st.get("dynamic_tokens") or [])
        tol = (_declared(shape, method, cfg, min(r + groups / n_visual, entering / n_visual), n_visual, n_text,
                         entering) - _declared(shape, method, cfg, r, n_visual, n_text, entering))
    assert abs(rec["achieved"] - target) <= tol + 1e-9, (method, target, rec["achieved"], tol)
    if method == "fastv":
        assert rec["achieved"] == pytest.approx(rec["predicted"], abs=1e-12)


# ------------------------------------------------------------------------------------------ out of reach
@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan"), True, "0.5"])
def test_a_target_outside_0_1_is_a_clear_error(bad):
    shape = flops.LLMShape(hidden=4, layers=4, heads=1, ffn=8)
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        budget.solve_flops(shape, "random", bad, 100, 4)


def test_unreachable_targets_give_their_reason(tiny, tiny_inputs):
    model, _ = tiny
    shape = flops.LLMShape.from_config(model.config)
    for method, words in (("none", "no pruning"), ("lookm", "1.00x at any budget"), ("prumerge", "adaptive")):
        rec = budget.solve_flops(shape, method, 0.5, 392, 20)
        assert not rec["reachable"] and rec["retain"] is None and words in rec["note"], rec
        assert not budget.run_at_flops(model, tiny_inputs, method, 0.5)["reachable"]
    assert budget.solve_flops(shape, "none", 1.0, 392, 20)["reachable"]
    # FastV: layers 0..K-1 see every token, so its floor is what they cost; well below it the prompt is refused
    rec = budget.solve_flops(shape, "fastv", 0.5, 392, 20, params={"K": 2})
    floor = rec["floor"]
    far = budget.solve_flops(shape, "fastv", floor - 2 * budget.FLOPS_SLACK, 392, 20, params={"K": 2})
    assert not far["reachable"] and far["retain"] is None
    assert "decoder layers 0..1 run on 392 visual tokens" in far["note"] and "K=2" in far["note"]
    # just below: run at its cheapest setting (one visual token kept), reported short
    near = budget.solve_flops(shape, "fastv", floor - budget.FLOPS_SLACK / 2, 392, 20, params={"K": 2})
    assert not near["reachable"] and near["retain"] == pytest.approx(1 / 392) and near["predicted"] == floor
    # PruneVid: what stage 1 lets in caps what its in-LLM cut can keep
    rec = budget.solve_flops(shape, "prunevid", 0.9, 392, 20, params={"selected_layer": 1, "retain": 1.0},
                             entering=40)
    assert not rec["reachable"] and rec["retain"] is None and "stage 1 lets 40 of 392" in rec["note"]
    # a method's own rule stopping short: DyCoke keeps 3 of 8 frames whole, so it cannot go below 3/8 retained; a
    # target its declared schedule meets at retain 0.2 runs, at what DyCoke reaches, and says so
    prunevid.apply(model, method="dycoke", L=1, retain=1.0)
    try:
        cfg, (n_visual, n_text) = state.active_config(model), budget.prompt_counts(model, tiny_inputs)
    finally:
        prunevid.remove(model)
    target = _declared(shape, "dycoke", cfg, 0.2, n_visual, n_text, None)
    low = budget.run_at_flops(model, tiny_inputs, "dycoke", target, L=1)
    assert not low["reachable"] and "cannot retain less than 3/8" in low["note"]
    assert low["row"]["flops_reachable"] is False and low["achieved"] > low["predicted"]


# ------------------------------------------------------------------------------------------ the runner
@pytest.fixture(scope="module")
def mvbench(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("datas"))
    fixtures.make_mvbench(root)
    return root


@pytest.fixture(scope="module")
def tiny_loaded():
    return models.load("tiny")


def _eval(tiny_loaded, root, out, **kw):
    return runner.evaluate(benchmark="mvbench", model="tiny", data_root=root, output_dir=str(out), loaded=tiny_loaded,
                           progress=False, frames=4, protocol="official", limit=3, **kw)


def test_runner_flops_round_trips_into_results(tiny_loaded, mvbench, tmp_path):
    target = 0.8                       # above what one kept token costs beside the fixture's long MVBench prompts
    res = _eval(tiny_loaded, mvbench, tmp_path / "run", method="visionzip", flops=target)
    on_disk = json.load(open(tmp_path / "run" / "results.json"))
    rows = [r for r in results.RunWriter(str(tmp_path / "run")).read_samples() if not r["error"]]
    fl = on_disk["flops"]
    assert on_disk == json.loads(json.dumps(res)) and rows
    assert fl["target"] == target and fl["formula"] == "paper" and fl["unreachable_items"] == 0
    assert fl["achieved"] == fl["ratio_paper_vs_unpruned"] == pytest.approx(
        sum(r["flops_ratio_paper"] for r in rows) / len(rows))
    assert on_disk["method"]["retain"] is None                     # no one value: solved per prompt
    shape = flops.LLMShape.from_config(tiny_loaded.model.config)
    for r in rows:
        assert r["flops_target"] == target and r["flops_reachable"] and r["flops_note"] is None
        assert r["flops_ratio_paper"] == flops.flops_ratio_of_run(shape, r, formula="paper")   # from the record
        assert r["flops_predicted"] == pytest.approx(target, abs=1e-9)
        assert abs(r["flops_ratio_paper"] - target) < 0.05         # one token per frame of 49: a few percent
    assert fl["retain"]["min"] <= fl["retain"]["mean"] <= fl["retain"]["max"]
    assert json.load(open(tmp_path / "run" / "run_config.json"))["flops"] == target
    # another target is another run
    with pytest.raises(ValueError, match="flops"):
        _eval(tiny_loaded, mvbench, tmp_path / "run", method="visionzip", flops=0.9)


def test_runner_refuses_what_a_flops_target_cannot_mean(tiny_loaded, mvbench, tmp_path, capsys):
    with pytest.raises(ValueError, match="exclusive"):
        _eval(tiny_loaded, mvbench, tmp_path / "a", method="random", flops=0.5, params={"retain": 0.3})
    with pytest.raises(budget.FlopsUnreachable, match="1.00x at any budget"):
        _eval(tiny_loaded, mvbench, tmp_path / "b", method="lookm", flops=0.5)
    assert not (tmp_path / "b").exists()                            # before any work
    # FastV at K = 2 of 4 layers cannot cost less than its two full layers: the run stops with the reason
    with pytest.raises(budget.FlopsUnreachable, match="decoder layers 0..1"):
        _eval(tiny_loaded, mvbench, tmp_path / "c", method="fastv", flops=0.1)
    assert not (tmp_path / "c" / "results.json").exists()
    code = cli.main(["eval", "--benchmark", "mvbench", "--model", "tiny", "--flops", "1.5", "--data-root", mvbench])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "(0, 1]" in err


def test_runner_checks_see_the_method_switched_on(mvbench, tmp_path):
    """The target stands in for retain until each prompt's is solved, so the checks before a run see the method as
    it will run: VisionZip on Qwen2-VL (no vision attention extracted) is refused before the folder exists."""
    qwen = models.load("tiny-qwen2.5-vl")
    with pytest.raises(ValueError, match="vision tower's attention"):
        runner.evaluate(benchmark="mvbench", model="tiny-qwen2.5-vl", data_root=mvbench, output_dir=str(tmp_path / "q"),
                        loaded=qwen, progress=False, frames=4, protocol="official", limit=1, method="visionzip",
                        flops=0.8)
    assert not (tmp_path / "q").exists()


def test_the_solved_budget_keeps_the_items_hints(tiny, tiny_inputs):
    """Re-applying the method at each prompt's retain keeps the ground truth the runner gave for the item (the
    oracle's object masks)."""
    model, _ = tiny
    prunevid.apply(model, method="oracle", retain=0.5)
    try:
        masks = torch.zeros(8, 64, 64)
        masks[:, 16:40, 8:32] = 1.0
        state.set_hints(model, object_masks=masks)
        matcher = budget.FlopsMatcher("oracle", 0.5, state.active_config(model))
        rec = matcher.prepare(model, tiny_inputs)
        assert state.active_config(model).retain == rec["retain"] != 0.5
        assert state.hints(model)["object_masks"] is masks
        with torch.no_grad():
            model(**tiny_inputs)                               # the oracle finds its masks
        assert prunevid.stats(model)["visual_tokens_stage1"] < prunevid.stats(model)["visual_tokens_in"]
    finally:
        prunevid.remove(model)


# ------------------------------------------------------------------------------------------ sweeps and notebook
def test_sweep_flops_cells_are_runnable_and_the_notebook_takes_the_parameter():
    for path in glob.glob(os.path.join(ROOT, "sweeps", "*.yaml")):
        for c in report.expand_cells(report.load_sweep(path)):
            if c.get("flops") is None:
                continue
            assert c.get("retain") is None, (path, c)              # exclusive with retain
            budget.check_flops_target(c["flops"])
            assert budget.flops_static_reason(c["method"], c["flops"], methods.config_class(c["method"])) is None
    nb = json.load(open(os.path.join(ROOT, "notebooks", "10_benchmark.ipynb")))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert any(line.startswith("flops: float = None") for line in code[0]["source"])
    assert "flops=flops" in "".join("".join(c["source"]) for c in code[1:])


# ------------------------------------------------------------------------------------------ the report
def _cell(out, params, *, correct, flops_block=None, failure=None):
    """A cell folder written by hand (params.json, results.json, samples.jsonl, or failed.json), model m on
    benchmark b as a sweep's base gives them."""
    params = {"model": "m", "benchmark": "b", **params}
    rid = report.cell_id(params)
    folder = out / "runs" / rid
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(params))
    if failure:
        (folder / "failed.json").write_text(json.dumps({"run_id": rid, "params": params, "error": failure}))
        return rid
    from prunevid.benchmarks.base import mc_metrics
    rows = [{"id": f"q{i}", "category": "cat", "prediction": "A", "parsed": "A", "answer": "A", "correct": bool(c),
             "error": None} for i, c in enumerate(correct)]
    w = results.RunWriter(str(folder))
    for r in rows:
        w.append_sample(r)
    retained = 1.0 if params["method"] == "none" else 0.3
    w.write_results(results.base_results(
        run_id=rid, config={"model": "m", "benchmark": "b"}, method={"name": params["method"]},
        n_samples={"total": len(rows), "done": len(rows), "errors": 0, "unparsed": 0}, metrics=mc_metrics(rows),
        tokens={"retained_ratio": retained}, flops=flops_block or {"ratio_vs_unpruned": retained},
        timing={}, **results.status_fields(rows, complete=True)))
    return rid


def _flops_block(target, achieved, short=0):
    return {"backend": "analytic", "ratio_vs_unpruned": achieved, "ratio_paper_vs_unpruned": achieved,
            "target": target, "formula": "paper", "achieved": achieved,
            "retain": {"mean": 0.3, "min": 0.29, "max": 0.31}, "unreachable_items": short,
            "unreachable_note": "stage 1 lets 24 of 784 visual tokens in" if short else None}


def test_report_has_a_matched_flops_panel_when_the_sweep_has_flops_cells(tmp_path):
    out = tmp_path / "sweep"
    _cell(out, {"method": "none"}, correct=[1] * 40, flops_block={"ratio_vs_unpruned": 1.0})
    _cell(out, {"method": "visionzip", "retain": 0.25}, correct=[1] * 40)
    vz = _cell(out, {"method": "visionzip", "flops": 0.25}, correct=[0] * 20 + [1] * 20,
               flops_block=_flops_block(0.25, 0.249))
    pv = _cell(out, {"method": "prunevid", "flops": 0.25}, correct=[0] + [1] * 39,
               flops_block=_flops_block(0.25, 0.24, short=3))
    _cell(out, {"method": "fastv", "flops": 0.25}, correct=[],
          failure="--flops 0.25: fastv cannot cost as little as 0.25x the unpruned prefill here")
    page = open(report.build_index(str(out), title="t")).read()
    assert "Accuracy at matched prefill FLOPs" in page
    assert (out / "accuracy_at_matched_flops.png").stat().st_size > 1000
    section = page.split("Accuracy at matched prefill FLOPs")[1]
    assert 'src="accuracy_at_matched_flops.png"' in section        # the figure sits in its own section
    assert vz in section and pv in section and "fastv cannot cost as little" in section
    # the sentence per FLOPs target: the paired verdicts (the same Holm family as the main table), the shortfall,
    # the cell that could not run
    sentence = next(s for s in report.budget_sentences(_rows(out), "flops"))
    assert sentence.startswith("prefill FLOPs 25% (target; achieved 24.0–24.9%, paper formula)")
    assert "worse than unpruned (Holm-adjusted exact McNemar p < 0.05): visionzip" in sentence
    assert "not shown different from unpruned (n = 40): prunevid" in sentence
    assert "short of the target: prunevid (3 item(s)" in sentence and "could not run: fastv" in sentence
    # the retained-tokens sentences keep their own budgets; the FLOPs cells' settings name the target
    assert all(not s.startswith("prefill FLOPs") for s in report.budget_sentences(_rows(out), "retain"))
    rows = {r["run_id"]: r for r in _rows(out)}
    assert rows[vz]["settings"] == "flops=0.25" and rows[vz]["budget_kind"] == "flops"
    # the panel: the FLOPs cells and the reference, at the achieved ratio
    (panel,) = report.plot_panels(report.matched_flops_rows(list(rows.values())), "flops_paper")
    xs = {p[2]: p[0] for s in panel["series"] for p in s["points"]}
    assert xs[vz] == pytest.approx(24.9) and xs[pv] == pytest.approx(24.0) and panel["unpruned"] == 100.0
    assert len(xs) == 3                                            # not the retain cell


def _rows(out):
    rows = [report._row(r) for r in report.collect(str(out))]
    report._paired(rows, str(out))
    return rows


def test_report_without_flops_cells_has_no_matched_flops_section(tmp_path):
    out = tmp_path / "sweep"
    _cell(out, {"method": "none"}, correct=[1] * 10, flops_block={"ratio_vs_unpruned": 1.0})
    _cell(out, {"method": "random", "retain": 0.25}, correct=[1] * 10)
    page = open(report.build_index(str(out), title="t")).read()
    assert "matched prefill FLOPs" not in page and not (out / "accuracy_at_matched_flops.png").exists()
