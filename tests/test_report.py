"""Sweep execution with papermill, HTML export, index page — and the index opened in a real headless browser."""
import json
import os

import fixtures
import nbformat
import pytest

from prunevid import models
from prunevid.harness import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A stand-in for the benchmark notebook: writes a results.json in the kit's schema from its parameters.
FAKE_PARAMS = 'method = "none"\nalpha = 0.4\nfail = False\nbenchmark = "fake"\nmodel = "tiny"\noutput_dir = "."\n'
FAKE_BODY = '''
from prunevid.harness import results
if fail:
    raise RuntimeError("this cell was told to fail")
retained = 1.0 if method == "none" else alpha * 0.5
res = results.base_results(config={"model": model, "benchmark": benchmark}, method={"name": method, "alpha": alpha},
                           n_samples={"total": 4, "done": 4, "errors": 0, "unparsed": 0},
                           metrics={"accuracy": 50 + 40 * retained,
                                    "by_category": {"cat_a": 40 + 50 * retained, "cat_b": 60.0}},
                           tokens={"retained_ratio": retained}, flops={"backend": "analytic", "ratio_vs_unpruned": retained},
                           timing={"prefill_ms": 1.0})
results.RunWriter(output_dir).write_results(res)
import os
with open(os.path.join(output_dir, "threads.txt"), "w") as f:     # what the kernel was started with
    f.write(str(os.environ.get("OMP_NUM_THREADS")))
print("accuracy", res["metrics"]["accuracy"])
'''


def _fake_notebook(path):
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(FAKE_PARAMS)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# fake benchmark"), p, nbformat.v4.new_code_cell(FAKE_BODY)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    _fake_notebook(tmp / "fake.ipynb")
    (tmp / "s.yaml").write_text(
        f"name: unit\nnotebook: {tmp / 'fake.ipynb'}\nbase: {{benchmark: fake}}\n"
        "grid: {method: [none, prunevid], alpha: [0.2, 0.4]}\ncells: [{method: broken, fail: true}]\n")
    old = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = ROOT + (os.pathsep + old if old else "")
    try:
        sweep = report.load_sweep(str(tmp / "s.yaml"))
        status = report.run_sweep(sweep, str(tmp / "reports"), log=lambda *a: None)
        again = report.run_sweep(sweep, str(tmp / "reports"), log=lambda *a: None)
    finally:
        os.environ["PYTHONPATH"] = old
    return tmp / "reports" / "unit", status, again


def test_cells_expand_and_ids_are_stable():
    sweep = {"base": {"benchmark": "b"}, "grid": {"method": ["a", "c"], "alpha": [1, 2]}, "cells": [{"method": "a", "alpha": 1}]}
    cells = report.expand_cells(sweep)
    assert len(cells) == 4                                           # the explicit duplicate is dropped
    assert report.cell_id(cells[0]) == report.cell_id(dict(reversed(list(cells[0].items()))))
    with pytest.raises(ValueError, match="non-empty list"):
        report.expand_cells({"grid": {"method": "a"}})


def test_sweep_runs_skips_and_records_failures(sweep_dir):
    out, status, again = sweep_dir
    assert sorted(status.values()) == ["done"] * 4 + ["failed"]
    assert sorted(again.values()) == ["failed"] + ["skipped"] * 4      # a rerun resumes; the failure is retried
    failed = [k for k, v in status.items() if v == "failed"][0]
    info = json.loads((out / "runs" / failed / "failed.json").read_text())
    assert "told to fail" in info["error"]
    page = (out / "runs" / f"{failed}.html").read_text()
    assert "told to fail" in page
    ok = [k for k, v in status.items() if v == "done"][0]
    run_page = (out / "runs" / f"{ok}.html").read_text()
    assert "accuracy" in run_page and "results.RunWriter" not in run_page     # outputs kept, code cells hidden
    index = (out / "index.html").read_text()
    main_table = index.split("<h2>")[0]
    assert main_table.count("<tr") == 6 and "failed: " in main_table
    assert (out / "accuracy_vs_retention.png").stat().st_size > 1000


CHECK_PAGE = """<!doctype html><html><body><pre id="result">pending</pre>
<iframe id="f" src="index.html" style="width:1200px;height:900px"></iframe>
<script>
document.getElementById('f').onload = async () => {
  const doc = document.getElementById('f').contentDocument;
  const imgs = [...doc.images];
  await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.onload = r; i.onerror = r; })));
  const links = [...doc.querySelectorAll('a[href]')].map(a => a.href);
  const codes = await Promise.all(links.map(h => fetch(h).then(r => r.status).catch(() => 0)));
  document.getElementById('result').textContent = JSON.stringify({
    title: doc.title, rows: doc.querySelector('table').querySelectorAll('tr').length, tables: doc.querySelectorAll('table').length,
    images: imgs.map(i => i.naturalWidth), links: codes});
};
</script></body></html>"""


def test_index_renders_in_a_headless_browser(sweep_dir):
    out, _, _ = sweep_dir
    result = fixtures.browser_check(str(out), CHECK_PAGE, str(out / ".chrome"))
    assert result["title"].startswith("unit") and result["rows"] == 6 and result["tables"] == 2   # cells, categories
    assert result["images"] and all(w > 0 for w in result["images"])     # every image loaded
    assert result["links"] and all(code == 200 for code in result["links"])


def test_shipped_sweep_files_are_valid():
    import glob
    from prunevid import methods
    for path in glob.glob(os.path.join(ROOT, "sweeps", "*.yaml")):
        sweep = report.load_sweep(path)
        cells = report.expand_cells(sweep)
        assert cells and all(c["method"] in methods.available() for c in cells), path
        assert os.path.isfile(os.path.join(ROOT, sweep["notebook"])), path
        for c in cells:            # the benchmark notebook's rule: every named knob given, then method_params
            named = ("tau", "temporal_segment_ratio", "cluster_ratio", "selected_layer", "alpha", "retain")
            params = {k: c[k] for k in named if c.get(k) is not None}
            params.update(c.get("method_params") or {})
            methods.make_config(c["method"], params)     # a name the method lacks / a bad value: fails here


def test_index_compares_with_unpruned_and_lists_categories(sweep_dir):
    out, _, _ = sweep_dir
    page = (out / "index.html").read_text()
    assert "of unpruned" in page and "100.0%" in page             # the unpruned cell relative to itself
    assert "Accuracy per category: fake" in page and "cat_a" in page and "cat_b" in page
    rows = [report._row(r) for r in report.collect(str(out))]
    report._relative(rows)
    none = next(r for r in rows if r["method"] == "none" and r["status"] == "done")
    other = next(r for r in rows if r["method"] == "prunevid" and r["status"] == "done")
    assert none["relative"] == 1.0 and other["relative"] == other["score"] / none["score"] < 1


def test_demo_command_runs_a_sweep_with_an_absolute_data_root(tmp_path, capsys, monkeypatch):
    from prunevid.harness import cli
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)       # restored after the test
    _fake_notebook(tmp_path / "fake.ipynb")
    (tmp_path / "d.yaml").write_text(f"name: study\ndescription: first paragraph\nnotebook: {tmp_path / 'fake.ipynb'}\n"
                                     "base: {benchmark: fake, model: demo}\ncells: [{method: none}]\n")
    old = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = ROOT + (os.pathsep + old if old else "")
    try:
        rc = cli.main(["demo", "--sweep", str(tmp_path / "d.yaml"), "--reports", str(tmp_path / "reports"),
                       "--data-root", "rel/data", "--limit", "3"])
    finally:
        os.environ["PYTHONPATH"] = old
    assert rc == 0
    run = next((tmp_path / "reports" / "study" / "runs").glob("*/params.json"))
    params = json.loads(run.read_text())
    assert os.path.isabs(params["data_root"]) and params["limit"] == 3
    assert (run.parent / "threads.txt").read_text() == "1"     # the demo model's cells run on one thread
    # the limit is part of a cell's id: `report` finds the cells of `demo --limit 3` when given the same limit
    index = ["report", "--sweep", str(tmp_path / "d.yaml"), "--reports", str(tmp_path / "reports"), "--index-only"]
    assert cli.main(index) == 0
    assert "1 other cell folder" in (tmp_path / "reports" / "study" / "index.html").read_text()
    assert cli.main(index + ["--limit", "3"]) == 0
    again = (tmp_path / "reports" / "study" / "index.html").read_text()
    assert "other cell folder" not in again and run.parent.name in again
    page = (tmp_path / "reports" / "study" / "index.html").read_text()
    assert "first paragraph" in page
    assert "1 cells ok, 0 failed" in capsys.readouterr().out
    from prunevid import models
    if models.default_model() == "demo":
        assert params["model"] == "demo" and "not shipped" not in page
    else:           # no shipped model: the study runs on the random tiny model and says so at the top
        assert params["model"] == "tiny" and "not shipped yet" in page and "chance level" in page


def test_rows_show_named_options_from_method_params_and_plot_them_as_their_own_line():
    res = {"method": {"name": "prunevid", "tau": 0.8, "retain": 0.25, "positions": "original", "stage1": True},
           "config": {"model": "m", "benchmark": "b"}, "metrics": {"accuracy": 50.0}, "tokens": {}, "flops": {}}
    params = {"method": "prunevid", "retain": 0.25, "method_params": {"positions": "original"}}
    row = report._row({"run_id": "r", "results": res, "params": params, "failure": None})
    assert row["settings"] == "retain=0.25, positions=original"     # tau and stage1 were not set by the cell
    assert row["variant"] == "prunevid (positions=original)"
    plain = report._row({"run_id": "r", "results": res, "params": {"method": "prunevid", "retain": 0.25},
                         "failure": None})
    assert plain["settings"] == "retain=0.25" and plain["variant"] == "prunevid"


def test_record_keeps_results_samples_and_index_but_not_pages(sweep_dir, tmp_path):
    out, _, _ = sweep_dir
    dest = tmp_path / "recorded"
    (dest / "stale").mkdir(parents=True)                            # a previous record is replaced, not merged
    index = report.record(str(out), str(dest), title="unit", description="what it shows")
    kept = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    cells = [d.name for d in (out / "runs").iterdir() if d.is_dir()]
    assert not (dest / "stale").exists()
    assert {k.split("/")[1] for k in kept if k.startswith("runs/")} == set(cells)
    assert all(k.rsplit("/", 1)[-1] in ("params.json", "run_config.json", "results.json", "failed.json",
                                         "samples.jsonl") for k in kept if k.startswith("runs/"))
    for rid in cells:                                               # the per-item log travels with the record
        src = out / "runs" / rid / "samples.jsonl"
        if src.exists():
            assert (dest / "runs" / rid / "samples.jsonl").read_bytes() == src.read_bytes()
    page = open(index).read()
    assert "what it shows" in page and page.count("<tr") == (out / "index.html").read_text().count("<tr")
    assert "commit:" in (dest / "RECORD.md").read_text()
    with pytest.raises(ValueError, match="no cells"):
        report.record(str(tmp_path / "empty"), str(tmp_path / "x"))


RECORDING_CELL = '''
import os
from prunevid import models
from prunevid.harness import results
os.makedirs(output_dir, exist_ok=True)
with open(os.path.join(output_dir, "samples.jsonl"), "a") as f:      # one line per execution into this folder
    f.write("{}\\n")
results.atomic_write_json(os.path.join(output_dir, "run_config.json"),
                          {"model": model, "weights": models.fingerprint_of(model)})
'''


def test_sweep_reruns_cells_whose_weights_changed_and_force_starts_from_scratch(tmp_path):
    """A cell recorded with other weights under the same model name (a re-shipped demo model) is rerun from an
    empty folder, never resumed from the old samples; --force clears the folder too."""
    mdir = tmp_path / "model"
    mdir.mkdir()
    (mdir / "config.json").write_text("{}")
    (mdir / "model.safetensors").write_bytes(b"weights one")
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(FAKE_PARAMS)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell(RECORDING_CELL), nbformat.v4.new_code_cell(FAKE_BODY)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(tmp_path / "nb.ipynb"))
    (tmp_path / "s.yaml").write_text(f"name: w\nnotebook: {tmp_path / 'nb.ipynb'}\ncells: [{{model: {mdir}}}]\n")
    sweep = report.load_sweep(str(tmp_path / "s.yaml"))
    old = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = ROOT + (os.pathsep + old if old else "")
    logs = []
    try:
        def run(**kw):
            status = report.run_sweep(sweep, str(tmp_path / "reports"), log=logs.append, **kw)
            (rid, st), = status.items()
            lines = (tmp_path / "reports" / "w" / "runs" / rid / "samples.jsonl").read_text().count("\n")
            return st, lines
        assert run() == ("done", 1)
        assert run() == ("skipped", 1)
        (mdir / "model.safetensors").write_bytes(b"weights two")
        assert run() == ("done", 1)                         # rerun into a cleared folder, not appended to
        assert any("weights changed" in m for m in logs)
        assert run() == ("skipped", 1)
        assert run(force=True) == ("done", 1)
        # a record names the weights its cells ran with
        report.record(str(tmp_path / "reports" / "w"), str(tmp_path / "rec"), title="w")
        assert f"{mdir}: {models.fingerprint_of(str(mdir))}" in (tmp_path / "rec" / "RECORD.md").read_text()
    finally:
        os.environ["PYTHONPATH"] = old


@pytest.mark.parametrize("benchmark,split,version", [("synthetic", "test", 1), ("synthetic-val", "val", 1),
                                                     ("synthetic-v3", "test", 3), ("synthetic-v3-val", "val", 3)])
def test_demo_command_prepares_the_split_and_world_of_the_sweep_s_benchmark(tmp_path, monkeypatch, benchmark, split,
                                                                            version):
    """`prunevid demo` generates the synthetic split its sweep reads before the cells start: the split and world
    version of the benchmark named in the sweep's base (a version-3 study must not prepare version 1's files)."""
    from prunevid import synthetic
    from prunevid.harness import cli
    calls = []
    monkeypatch.setattr(synthetic, "ensure_split", lambda root, s="test", *, version=1, **kw: calls.append((s, version)))
    monkeypatch.setattr(report, "run_sweep", lambda sweep, reports, **kw: {"cell": "done"})
    (tmp_path / "d.yaml").write_text(f"name: study\nnotebook: {tmp_path / 'fake.ipynb'}\n"
                                     f"base: {{benchmark: {benchmark}, model: tiny}}\ncells: [{{method: none}}]\n")
    assert cli.main(["demo", "--sweep", str(tmp_path / "d.yaml"), "--reports", str(tmp_path / "reports"),
                     "--data-root", str(tmp_path / "data")]) == 0
    assert calls == [(split, version)]
