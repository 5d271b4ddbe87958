"""Run folders that cannot lie (docs/run-folders.md): one row per item id whatever the log holds, one run per
folder (a lock naming its holder; stale locks taken over), SIGINT/SIGTERM as one line plus an interim
results.json, one-line errors for bad input, readable files, and a sweep index that compares like with like."""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import fixtures
from prunevid import models
from prunevid.harness import cli, report, results, runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
ROW = {k: None for k in results.SAMPLE_FIELDS}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("datas"))
    fixtures.make_mvbench(root)                 # 5 items, the 4th a corrupt video
    return root


@pytest.fixture(scope="module")
def tiny():
    return models.load("tiny")


def _eval(tiny, root, out, **kw):
    kw.setdefault("frames", 4)
    kw.setdefault("protocol", "official")
    return runner.evaluate(benchmark="mvbench", model="tiny", data_root=root, output_dir=str(out), loaded=tiny,
                           progress=False, **kw)


def _snapshot(folder):
    return {p: (os.stat(os.path.join(folder, p)).st_mtime_ns, os.stat(os.path.join(folder, p)).st_size)
            for p in sorted(os.listdir(folder))}


# ------------------------------------------------------------------------------------------------ the log
def test_read_samples_skips_bad_lines_and_keeps_the_last_row_of_each_id(tmp_path):
    w = results.RunWriter(str(tmp_path))
    lines = [json.dumps(dict(ROW, id="a", correct=False)),
             '{"id": "b", "categ',                                  # damaged in the middle of the log
             json.dumps(dict(ROW, id="c")),
             json.dumps({"id": "d"}),                               # valid JSON, not a complete row
             "[1, 2]",
             json.dumps(dict(ROW, id="a", correct=True)),           # a later row of "a": this one counts
             json.dumps(dict(ROW, id="e"))]
    with open(w.samples_path, "w") as f:
        f.write("\n".join(lines) + "\n" + '{"id": "f", "cat')      # and a torn last line (a kill mid-write)
    rows = w.read_samples()
    assert [r["id"] for r in rows] == ["a", "c", "e"]              # first-logged order, one row per id
    assert rows[0]["correct"] is True
    assert w.skipped == [2, 4, 5] and w.duplicates == 1 and w.torn
    note = w.problems()
    assert "3 unreadable line(s) (line 2, 4, 5" in note and "1 duplicate row(s)" in note
    assert w.done_ids() == {"a", "c", "e"}
    w.append_sample(dict(ROW, id="f"))                              # the torn tail is dropped first
    assert [r["id"] for r in w.read_samples()] == ["a", "c", "e", "f"] and not w.torn
    clean = results.RunWriter(str(tmp_path / "clean"))
    clean.append_sample(dict(ROW, id="x"))
    assert clean.read_samples() and clean.problems() is None


def test_corrupt_middle_line_reruns_only_its_item_and_scores_each_id_once(root, tiny, tmp_path, monkeypatch):
    """The case that wrote 115 rows for 60 ids: a rerun after one damaged line runs that item alone, and
    results.json counts every id once, from the last complete row of each."""
    out = tmp_path / "run"
    _eval(tiny, root, out, limit=3)
    path = out / "samples.jsonl"
    lines = path.read_text().splitlines()
    damaged = json.loads(lines[1])["id"]
    first = json.loads(lines[0])
    lines[1] = lines[1][:25] + "\x00garbage"
    # the first item logged twice (two runs before the lock existed): its later row, marked correct, counts
    lines.append(json.dumps(dict(first, correct=True)))
    path.write_text("\n".join(lines) + "\n")
    seen = []
    real = runner.run_item
    monkeypatch.setattr(runner, "run_item", lambda *a, **k: seen.append(a[1].id) or real(*a, **k))
    res = _eval(tiny, root, out, limit=3)
    assert seen == [damaged]
    rows = results.RunWriter(str(out)).read_samples()
    assert len(rows) == len({r["id"] for r in rows}) == 3
    assert res["n_samples"]["done"] == res["n_samples"]["total"] == 3
    assert res["complete"] is True and res["items_sha1"] == results.items_digest(rows)
    correct = sum(1 for r in rows if r["correct"])
    assert correct >= 1 and res["metrics"]["accuracy"] == pytest.approx(100 * correct / 3)
    assert json.loads((out / "results.json").read_text())["metrics"] == res["metrics"]
    seen.clear()
    again = _eval(tiny, root, out, limit=3)                        # settled: nothing left to run
    assert seen == [] and again["metrics"] == res["metrics"]


# ------------------------------------------------------------------------------------------------ the lock
HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("r", {path!r})
r = importlib.util.module_from_spec(spec); spec.loader.exec_module(r)
r.RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding a run folder's lock (results.py alone, no torch: it starts in a blink)."""
    procs = []

    def start(folder):
        code = HOLDER.format(path=os.path.join(REPO, "prunevid", "harness", "results.py"))
        p = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "held"
        return p
    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_a_second_run_is_refused_naming_the_holder_and_writes_nothing(root, tiny, tmp_path, holder, capsys):
    out = tmp_path / "run"
    _eval(tiny, root, out, limit=1)
    p = holder(out)
    before = _snapshot(out)
    rc = cli.main(["eval", "--benchmark", "mvbench", "--model", "tiny", "--data-root", root, "--frames", "4",
                   "--protocol", "official", "--limit", "2", "--output-dir", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and err.startswith("error: ")
    assert f"in use by another run: pid {p.pid} on {socket.gethostname()}" in err
    assert _snapshot(out) == before                                # nothing written, not even the lock file
    with pytest.raises(ValueError, match=f"in use by another run: pid {p.pid}"):   # the API refuses the same way
        _eval(tiny, root, out, limit=2)
    p.kill()
    p.wait()
    res = _eval(tiny, root, out, limit=2)                          # the holder died (kill -9): free again
    assert res["n_samples"]["done"] == 2


def test_lock_in_one_process_and_release(tmp_path):
    lock = results.RunLock(str(tmp_path)).acquire()
    held = json.loads((tmp_path / results.LOCK_NAME).read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    with pytest.raises(results.RunLocked, match=f"pid {os.getpid()}"):
        results.RunLock(str(tmp_path)).acquire()                   # a second hold, even from the same process
    lock.release()
    assert (tmp_path / results.LOCK_NAME).read_text() == ""        # empty = free; the file stays
    with results.RunLock(str(tmp_path)):
        pass


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_lock_of_a_dead_process_is_taken_over(root, tiny, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / results.LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(),
                                                     "started": "yesterday", "command": "prunevid eval"}))
    res = _eval(tiny, root, out, limit=1)
    assert res["n_samples"]["done"] == 1 and (out / results.LOCK_NAME).read_text() == ""


def test_without_flock_the_recorded_holder_decides(tmp_path, monkeypatch, holder):
    """Filesystems without flock: a live pid on this host is refused, a dead one taken over; a holder on another
    host cannot be checked from here, so the message names the file to delete once that run is gone."""
    def no_flock(fd):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(results, "_flock", no_flock)
    live = tmp_path / "live"
    p = holder(live)                   # really holds it (its flock is real), and its pid is alive
    with pytest.raises(results.RunLocked, match=f"pid {p.pid} on {socket.gethostname()}"):
        results.RunLock(str(live)).acquire()
    dead = tmp_path / "dead"
    dead.mkdir()
    (dead / results.LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    results.RunLock(str(dead)).acquire().release()
    far = tmp_path / "far"
    far.mkdir()
    (far / results.LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "node-b.example"}))
    with pytest.raises(results.RunLocked, match=r"pid 1 on node-b.example.*if that run is gone, delete .*run.lock"):
        results.RunLock(str(far)).acquire()
    monkeypatch.undo()                 # even with a free flock, another host's holder is not assumed dead
    with pytest.raises(results.RunLocked, match="node-b.example"):
        results.RunLock(str(far)).acquire()


# ------------------------------------------------------------------------------------------------ signals
# The real CLI in a subprocess, each item slowed down so the signal lands mid-run; SIGINT left at its default
# in the child even where the test runner's own parent ignores it.
SLOW_CLI = """
import sys, time
from prunevid.harness import cli, runner
real = runner.run_item
def slow(*a, **k):
    time.sleep(1.0)
    return real(*a, **k)
runner.run_item = slow
sys.exit(cli.main(sys.argv[1:]))
"""


def _interrupt(root, out, sig):
    before = len((out / "samples.jsonl").read_text().splitlines()) if (out / "samples.jsonl").exists() else 0
    cmd = [sys.executable, "-c", SLOW_CLI, "eval", "--benchmark", "mvbench", "--model", "tiny", "--data-root", root,
           "--frames", "4", "--protocol", "official", "--output-dir", str(out), "--no-progress"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if (out / "samples.jsonl").exists() and len((out / "samples.jsonl").read_text().splitlines()) > before:
            break
        time.sleep(0.1)
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=60)
    return p.returncode, stdout, stderr


def test_sigint_and_sigterm_leave_one_line_an_interim_result_and_a_resumable_folder(root, tiny, tmp_path):
    out = tmp_path / "run"
    done = 0
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        rc, stdout, stderr = _interrupt(root, out, sig)
        assert rc == code, stderr[-2000:]
        assert "Traceback" not in stderr
        last = stderr.strip().splitlines()[-1]
        rows = results.RunWriter(str(out)).read_samples()
        assert done < len(rows) < 5
        done = len(rows)
        assert last == f"interrupted: {done}/5 done; rerun the same command to resume"
        interim = json.loads((out / "results.json").read_text())
        assert interim["complete"] is False and interim["n_samples"]["done"] == done
        assert interim["interrupted"]["signal"] == signal.Signals(sig).name
        assert not results.is_complete(str(out / "results.json"))
        assert (out / results.LOCK_NAME).read_text() == ""         # released on the way out
    res = _eval(tiny, root, out)                                    # the rerun finishes the run
    rows = results.RunWriter(str(out)).read_samples()
    assert res["complete"] is True and res["n_samples"]["done"] == 5
    assert len((out / "samples.jsonl").read_text().splitlines()) == len({r["id"] for r in rows}) == 5


# ------------------------------------------------------------------------------------------------ bad input
def _cli(argv, capsys):
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_bad_input_is_one_error_line_with_exit_2(root, tmp_path, capsys, monkeypatch):
    code, err = _cli(["clip", "--set", "gamma=1"], capsys)
    assert code == 2 and err.count("\n") == 0 and err.startswith("error: ") and "gamma" in err and "alpha" in err
    for command in ("clip", "eval"):
        code, err = _cli([command, "--set", "alpha"], capsys)
        assert code == 2 and err == "error: --set expects key=value, got 'alpha'"
    code, err = _cli(["clip", "--frames", "0"], capsys)
    assert code == 2 and err == "error: --frames must be >= 1, got 0"
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)    # a machine without CUDA, wherever this runs
    for argv in (["clip", "--device", "cuda"], ["eval", "--model", "tiny", "--device", "cuda"],
                 ["bench", "--preset", "tiny", "--device", "cuda"],
                 ["eval", "--model", "tiny", "--device", "cuda:1", "--benchmark", "mvbench", "--data-root", root]):
        code, err = _cli(argv, capsys)
        assert code == 2 and err.count("\n") == 0 and err.startswith("error: --device cuda") and "CUDA" in err
    code, err = _cli(["eval", "--model", "tiny", "--device", "gpu"], capsys)
    assert code == 2 and err == "error: unknown --device 'gpu'; use cpu, cuda or cuda:N"
    # a method the model cannot run: refused before the run folder exists, not on the first item
    out = tmp_path / "vz"
    code, err = _cli(["eval", "--model", "tiny-qwen2-vl", "--method", "visionzip", "--benchmark", "mvbench",
                      "--data-root", root, "--frames", "4", "--limit", "1", "--output-dir", str(out)], capsys)
    assert code == 2 and err.count("\n") == 0 and "'visionzip' needs the vision tower's attention" in err
    assert "Qwen2VL" in err and not out.exists()


def test_run_folder_files_are_readable_by_group_and_others(root, tiny, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        _eval(tiny, root, out, limit=1)
        for name in ("results.json", "run_config.json", "samples.jsonl", results.LOCK_NAME):
            assert oct(os.stat(out / name).st_mode & 0o777) == "0o644", name
        os.umask(0o027)
        results.atomic_write_json(str(tmp_path / "x.json"), {})
        assert oct(os.stat(tmp_path / "x.json").st_mode & 0o777) == "0o640"     # the umask still rules
    finally:
        os.umask(old)


def test_eval_summary_line_gives_retained_ratio_and_the_unpruned_score_on_the_same_items(root, tmp_path, capsys):
    base = ["eval", "--benchmark", "mvbench", "--model", "tiny", "--data-root", root, "--frames", "4",
            "--protocol", "official", "--limit", "2", "--no-progress"]
    assert cli.main(base + ["--method", "none", "--output-dir", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "retained 100.0% of visual tokens" in out and "unpruned" not in out      # it is the reference
    assert cli.main(base + ["--output-dir", str(tmp_path / "pv")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    rows = results.RunWriter(str(tmp_path / "pv")).read_samples()
    none_rows = results.RunWriter(str(tmp_path / "none")).read_samples()
    unpruned = 100 * sum(bool(r["correct"]) for r in none_rows) / 2
    res = json.loads((tmp_path / "pv" / "results.json").read_text())
    assert f"(unpruned {unpruned:.2f}% on the same 2 items: " in line and str(tmp_path / "none") in line
    assert f"retained {100 * res['tokens']['retained_ratio']:.1f}% of visual tokens; 2/2 done" in line
    # an item the unpruned run never saw: no comparison rather than one over other items
    more = rows + [dict(ROW, id="zzz", answer="A", correct=True)]
    assert results.unpruned_reference(str(tmp_path / "pv"), more, ["benchmark", "model", "frames"]) is None
    assert results.unpruned_reference(str(tmp_path / "none"), none_rows, ["benchmark"]) is None
    assert "unpruned" not in results.eval_summary(res, None)
    # a method whose budget is met on another measure (Method.budget_measure) says both numbers
    for method, words in (("pdrop", "after its last cut, 28.0% per decoder layer on average"),
                          ("lookm", "in the prefill, 28.0% in the KV cache")):
        other = dict(res, method={"name": method}, tokens=dict(res["tokens"], retained_ratio=0.05, budget_ratio=0.28))
        assert f"retained 5.0% of visual tokens {words}; 2/2 done" in results.eval_summary(other, None)


def test_first_use_of_the_data_root_says_what_it_writes(tmp_path, capsys):
    from prunevid import synthetic
    synthetic.ensure_split(str(tmp_path / "DATAS"), "val", n_per_task=1, tasks=synthetic.TASKS[:1])
    err = capsys.readouterr().err
    assert "generating the synthetic benchmark's val split (1 short mp4 clips" in err
    assert str(tmp_path / "DATAS" / "Synthetic") in err and "--data-root" in err
    synthetic.ensure_split(str(tmp_path / "DATAS"), "val", n_per_task=1, tasks=synthetic.TASKS[:1])
    assert capsys.readouterr().err == ""                                           # once


def test_clip_help_documents_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["clip", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option, default in (("--model", "tiny"), ("--video", "bikes"), ("--frames", "16"), ("--question", "'What"),
                            ("--set", "the paper's"), ("--repeats", "5"), ("--max-new-tokens", "8"),
                            ("--dtype", "float32"), ("--device", "cpu"), ("--output-dir", "reports/clip")):
        start = text.index(option + " ", text.index("options:"))          # its entry, not the usage line
        end = text.find(" --", start + len(option) + 1)
        assert f"default: {default}" in text[start:end if end > 0 else None], option


# ------------------------------------------------------------------------------------------------ the index
def _cell(out, params, *, method, score, retained, n=8, total=None, items=None, flops=None, complete=None, extra=None):
    rid = report.cell_id(params)
    d = out / "runs" / rid
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps(params))
    res = {"run_id": rid, "config": {"model": "m", "benchmark": "synthetic", "limit": params.get("limit")},
           "method": {"name": method, **(extra or {})}, "metrics": {"accuracy": score,
           "by_category_counts": {"moving_direction": {"correct": 1, "total": n}}},
           "n_samples": {"total": total or n, "done": n}, "tokens": {"retained_ratio": retained},
           "flops": {"ratio_vs_unpruned": flops if flops is not None else retained}, "timing": {}}
    if items is not None:
        res["items_sha1"] = items
    if complete is not None:
        res["complete"] = complete
    (d / "results.json").write_text(json.dumps(res))
    return rid


def test_index_shows_the_current_sweep_only_and_compares_the_same_items(tmp_path):
    """demo --limit 7, then --limit 8: the index shows the 8-item cells only, and "of unpruned" is never an
    8-item score over a 7-item one."""
    out = tmp_path / "sweep"
    for limit, none_score, fastv_score in ((7, 48.0, 49.0), (8, 50.0, 40.0)):
        _cell(out, {"method": "none", "limit": limit}, method="none", score=none_score, retained=1.0, n=limit)
        _cell(out, {"method": "fastv", "retain": 0.25, "limit": limit}, method="fastv", score=fastv_score,
              retained=0.25, n=limit, extra={"retain": 0.25})
    sweep = {"base": {"limit": 8}, "cells": [{"method": "none"}, {"method": "fastv", "retain": 0.25}]}
    cells = [report.cell_id(c) for c in report.expand_cells(sweep)]
    page = open(report.build_index(str(out), title="t", cells=cells)).read()
    table = page.split("</table>")[0]
    assert table.count("<tr") == 1 + 2 and "2 other cell folder(s)" in page
    assert "80.0%" in table and "102.1%" not in table and "98.0%" not in table       # 40 / 50, same 8 items
    rows = [report._row(r) for r in report.collect(str(out))]                         # all four folders together
    report._relative(rows)
    by = {(r["method"], r["n"]): r for r in rows}
    assert by[("fastv", 8)]["relative"] == pytest.approx(0.8) and by[("fastv", 7)]["relative"] == pytest.approx(49 / 48)
    # an unpruned cell that scored other items (interrupted at 7 of 8, or another item set): not compared
    out2 = tmp_path / "other"
    _cell(out2, {"method": "none"}, method="none", score=50.0, retained=1.0, n=7, total=8, complete=False)
    _cell(out2, {"method": "none", "x": 1}, method="none", score=50.0, retained=1.0, n=8, items="aaa")
    _cell(out2, {"method": "fastv"}, method="fastv", score=40.0, retained=0.25, n=8, items="bbb")
    rows = [report._row(r) for r in report.collect(str(out2))]
    report._relative(rows)
    fastv = next(r for r in rows if r["method"] == "fastv")
    assert fastv["relative"] is None and "scored other items" in fastv["relative_note"]
    assert next(r for r in rows if r["n"] == 7)["status"] == "incomplete"
    assert "n/c" in open(report.build_index(str(out2))).read()
    assert report._same_items({"items_sha1": "s", "n": 8, "total": 8}, {"items_sha1": "s", "n": 5, "total": 9})


def test_interim_results_do_not_count_as_complete(tmp_path):
    """What run_sweep asks before skipping a cell (report.run_sweep: is_complete)."""
    d = tmp_path / "c"
    d.mkdir()
    (d / "results.json").write_text(json.dumps({"complete": False}))
    assert not results.is_complete(str(d / "results.json"))
    (d / "results.json").write_text(json.dumps({"run_id": "x"}))          # older results: no key, complete
    assert results.is_complete(str(d / "results.json"))


def test_plots_one_colour_per_method_one_point_per_cell_and_reference_lines(tmp_path):
    out = tmp_path / "sweep"
    # cells written in an order that would give seaborn other colours per plot; PruneVid at K 0, 1, 2 share x
    _cell(out, {"method": "lookm", "retain": 0.25}, method="lookm", score=60.0, retained=1.0, flops=1.0,
          extra={"retain": 0.25})
    _cell(out, {"method": "none"}, method="none", score=60.0, retained=1.0)
    for k, score in ((0, 30.0), (1, 40.0), (2, 50.0)):
        _cell(out, {"method": "prunevid", "retain": 0.25, "selected_layer": k}, method="prunevid", score=score,
              retained=0.245, extra={"retain": 0.25, "selected_layer": k})
    _cell(out, {"method": "prunevid", "retain": 0.5}, method="prunevid", score=55.0, retained=0.5,
          extra={"retain": 0.5})
    _cell(out, {"method": "prunevid"}, method="prunevid", score=52.0, retained=0.3)
    _cell(out, {"method": "fastv", "retain": 0.5}, method="fastv", score=58.0, retained=0.5, flops=None,
          extra={"retain": 0.5})
    rows = [report._row(r) for r in report.collect(str(out))]
    import matplotlib
    matplotlib.use("Agg")
    colours = {}
    for x in ("retained", "flops"):
        (panel,) = report.plot_panels(rows, x)
        assert sum(len(s["points"]) for s in panel["series"]) == 8                     # one point per cell
        labels = {s["label"]: s for s in panel["series"]}
        assert {"prunevid (selected_layer=0)", "prunevid (selected_layer=1)", "prunevid (selected_layer=2)",
                "prunevid"} <= set(labels)                                              # K cells not averaged
        assert len(labels["prunevid"]["points"]) == 2                                   # retain 0.5 and the default
        assert len({labels[f"prunevid (selected_layer={k})"]["marker"] for k in (0, 1, 2)}) == 3
        assert panel["unpruned"] == 60.0 and panel["chance"] == pytest.approx(25.0)   # 4 options
        for s in panel["series"]:
            assert s["colour"] == report.METHOD_COLOURS[s["method"]]
            colours.setdefault(s["method"], set()).add(s["colour"])
        fig = report.plot_figure(rows, x)
        ax = fig.axes[0]
        assert "%" in ax.get_xlabel() and ax.get_ylabel().startswith("accuracy (% of items")
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        assert lines["fastv"].get_color() == report.METHOD_COLOURS["fastv"]
        assert "unpruned (60.0)" in lines and "chance (25.0)" in lines
        assert any("none = lookm" in t.get_text() for t in ax.texts)                 # the overlap is named
        import matplotlib.pyplot as plt
        plt.close(fig)
    assert all(len(c) == 1 for c in colours.values())                                  # same colour in both plots
    assert len(set(report.METHOD_COLOURS.values())) == len(report.METHOD_COLOURS)
    assert report.method_colour("newmethod") == report.method_colour("newmethod")


def test_perf_page_leads_with_the_recorded_real_shape_runs_and_says_where_they_ran():
    nb = json.load(open(os.path.join(REPO, "notebooks", "11_performance.ipynb")))
    headings = ["".join(c["source"]).splitlines()[0] for c in nb["cells"] if c["cell_type"] == "markdown"]
    assert headings[1].startswith("## Recorded runs: real model shapes")          # first, before any tiny result
    # the tiny-model timing section is gone (on a tiny model the speed-up ratio says nothing)
    assert not any(h.startswith("## The same measurement on the tiny model") for h in headings)
    assert not any('"bench"' in "".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    page = open(os.path.join(REPO, "reports", "perf", "index.html")).read()
    assert "LLM prefill speed-up" in page and "FLOPs ideal" in page                 # the speed-up curves
    assert "Recorded runs (real shapes, GPU runs)" not in page and "these are <strong>CPU runs</strong>" in page
    assert page.index("recorded run(s) on cpu") < page.index("Three counters")       # the speed-up comes first
