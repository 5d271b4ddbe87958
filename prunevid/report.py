"""Batch runs and HTML reports: ``python -m prunevid report --sweep SWEEP.yaml``.

A sweep file names a notebook (default: the benchmark notebook) and the parameter cells to run it with:

```yaml
name: demo                        # reports/<name>/
notebook: notebooks/10_benchmark.ipynb
base: {benchmark: synthetic, limit: 40}          # every cell gets these
grid: {method: [none, prunevid], alpha: [0.2, 0.4]}   # cartesian product
cells: [{method: fastv, retain: 0.25}]           # extra explicit cells (optional)
description: what the sweep shows               # optional; shown at the top of index.html
```

Each cell is executed with papermill into ``reports/<name>/runs/<run_id>/`` (its ``output_dir`` parameter),
which must end up holding the run's ``results.json``. Cells whose ``results.json`` exists are skipped, so a
rerun resumes a sweep. A failing cell is recorded (``failed.json``) and shown as failed in the index; the other
cells still run. Each executed notebook is exported to ``runs/<run_id>.html`` without code cells, and
``index.html`` compares all cells: a table like the paper's and accuracy-vs-retention / accuracy-vs-FLOPs plots.
"""
from __future__ import annotations

import hashlib
import html
import itertools
import json
import os
import shutil
import sys
import traceback
from typing import Optional

DEFAULT_NOTEBOOK = os.path.join("notebooks", "10_benchmark.ipynb")


# ------------------------------------------------------------------------------------------------ sweeps
def load_sweep(path: str) -> dict:
    import yaml
    if not os.path.isfile(path):
        raise FileNotFoundError(f"sweep file not found: {path}")
    with open(path) as f:
        sweep = yaml.safe_load(f) or {}
    unknown = set(sweep) - {"name", "notebook", "base", "grid", "cells", "kernel", "description"}
    if unknown:
        raise ValueError(f"unknown sweep keys {sorted(unknown)} in {path}")
    sweep.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    sweep.setdefault("notebook", DEFAULT_NOTEBOOK)
    return sweep


def expand_cells(sweep: dict) -> list:
    """The parameter dict of every cell: base + each grid combination, then base + each explicit cell."""
    base = dict(sweep.get("base") or {})
    grid = dict(sweep.get("grid") or {})
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"grid entry {key!r} must be a non-empty list")
    cells = []
    if grid:
        keys = list(grid)
        for combo in itertools.product(*(grid[k] for k in keys)):
            cells.append({**base, **dict(zip(keys, combo))})
    for extra in sweep.get("cells") or []:
        cells.append({**base, **extra})
    if not cells:
        cells.append(base)
    seen, unique = set(), []
    for c in cells:
        rid = cell_id(c)
        if rid not in seen:
            seen.add(rid)
            unique.append(c)
    return unique


# Where the data live is not what a cell measures: the same cell on another machine keeps its id (and its results).
LOCATION_KEYS = ("data_root",)


def cell_id(params: dict) -> str:
    """Readable and stable: the method and the values, plus a hash of all parameters but the data location."""
    ident = {k: v for k, v in params.items() if k not in LOCATION_KEYS}
    digest = hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:8]
    head = "-".join(str(params[k]) for k in ("benchmark", "model", "method") if k in params)
    head = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in head) or "cell"
    return f"{head}-{digest}"


# ------------------------------------------------------------------------------------------------ running
def _kernel() -> str:
    from jupyter_client.kernelspec import KernelSpecManager
    return "prunevid-kit" if "prunevid-kit" in KernelSpecManager().find_kernel_specs() else "python3"


def export_html(executed_path: str, html_path: str) -> None:
    """Executed notebook -> HTML without code cells (outputs and markdown only)."""
    import nbformat
    from nbconvert import HTMLExporter
    nb = nbformat.read(executed_path, as_version=4)
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    with open(html_path, "w") as f:
        f.write(body)


def _stale_weights(run_dir: str, params: dict, fingerprints: dict) -> Optional[str]:
    """Why the cell's folder holds another model's run (its recorded weights fingerprint differs from the
    model's now: a re-shipped demo model, a retrained checkpoint), or None. ``fingerprints`` memoises
    ``fingerprint_of`` per model for the sweep (a local checkpoint is hashed once, not once per cell)."""
    path = os.path.join(run_dir, "run_config.json")
    if not os.path.isfile(path):
        return None
    from .models import fingerprint_of
    try:
        with open(path) as f:
            stored = json.load(f).get("weights")
    except (OSError, ValueError):
        return "its run_config.json is unreadable"
    model = params.get("model")
    if model not in fingerprints:
        fingerprints[model] = fingerprint_of(model)
    now = fingerprints[model]
    if now is not None and stored != now:
        return f"the model's weights changed since it ran ({stored} there, {now} now)"
    return None


def run_sweep(sweep: dict, reports_root: str = "reports", *, kernel: Optional[str] = None, force: bool = False,
              log=print) -> dict:
    """Execute every cell of the sweep that has no results yet; returns {run_id: "done"|"skipped"|"failed"}.
    ``force`` reruns every cell from scratch (its folder is cleared first); a cell whose recorded model weights
    differ from the model's now is rerun from scratch as well."""
    import papermill as pm
    out_dir = os.path.join(reports_root, sweep["name"])
    runs_dir = os.path.join(out_dir, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    notebook = sweep["notebook"]
    if not os.path.isfile(notebook):
        raise FileNotFoundError(f"notebook not found: {notebook}")
    kernel = kernel or sweep.get("kernel") or _kernel()
    status = {}
    cells = expand_cells(sweep)
    fingerprints = {}
    for i, params in enumerate(cells, 1):
        rid = cell_id(params)
        run_dir = os.path.join(runs_dir, rid)
        stale = _stale_weights(run_dir, params, fingerprints)
        if (force or stale) and os.path.isdir(run_dir):
            # a rerun starts from nothing: the runner would otherwise resume from the old samples.jsonl
            if stale:
                log(f"[report] {i}/{len(cells)} {rid}: {stale}: rerunning from scratch")
            shutil.rmtree(run_dir)
        done = os.path.isfile(os.path.join(run_dir, "results.json"))
        if done:
            status[rid] = "skipped"
            log(f"[report] {i}/{len(cells)} {rid}: results exist, skipped")
            continue
        os.makedirs(run_dir, exist_ok=True)
        failed_path = os.path.join(run_dir, "failed.json")
        if os.path.exists(failed_path):
            os.unlink(failed_path)
        executed = os.path.join(runs_dir, f"{rid}.ipynb")
        log(f"[report] {i}/{len(cells)} {rid}: running {notebook} with {params}")
        try:
            pm.execute_notebook(notebook, executed, parameters={**params, "output_dir": os.path.abspath(run_dir)},
                                kernel_name=kernel, cwd=os.path.dirname(os.path.abspath(notebook)),
                                progress_bar=False)
            if not os.path.isfile(os.path.join(run_dir, "results.json")):
                raise RuntimeError("the notebook finished without writing results.json to its output_dir")
            status[rid] = "done"
        except Exception as e:  # a failed cell must not stop the sweep
            message = str(e).strip().splitlines()
            short = next((m for m in reversed(message) if m.strip()), type(e).__name__)
            with open(failed_path, "w") as f:
                json.dump({"run_id": rid, "params": params, "error": short,
                           "detail": "".join(traceback.format_exception_only(type(e), e))[-4000:]}, f, indent=2)
            status[rid] = "failed"
            log(f"[report] {rid}: FAILED: {short}")
        if os.path.isfile(executed):
            export_html(executed, os.path.join(runs_dir, f"{rid}.html"))
        with open(os.path.join(run_dir, "params.json"), "w") as f:
            json.dump(params, f, indent=2, default=str)
    build_index(out_dir, title=sweep["name"], description=sweep.get("description", ""))
    return status


# ------------------------------------------------------------------------------------------------ index
def collect(out_dir: str) -> list:
    """One record per cell folder: its params, results (or None) and failure (or None)."""
    runs_dir = os.path.join(out_dir, "runs")
    records = []
    if not os.path.isdir(runs_dir):
        return records
    for rid in sorted(os.listdir(runs_dir)):
        d = os.path.join(runs_dir, rid)
        if not os.path.isdir(d):
            continue
        rec = {"run_id": rid, "params": {}, "results": None, "failure": None}
        for key, name in (("params", "params.json"), ("results", "results.json"), ("failure", "failed.json")):
            p = os.path.join(d, name)
            if os.path.isfile(p):
                with open(p) as f:
                    rec[key] = json.load(f)
        records.append(rec)
    return records


def _row(rec: dict) -> dict:
    res = rec["results"] or {}
    method = res.get("method") or {}
    tokens = res.get("tokens") or {}
    flops = res.get("flops") or {}
    metrics = res.get("metrics") or {}
    cfg = res.get("config") or {}
    score = metrics.get("accuracy")
    if score is None and isinstance(metrics.get("scores"), dict):
        score = metrics["scores"].get("avg")
    extra = rec["params"].get("method_params") or {}        # named options (positions, stage1, L, ...)
    hyper = {k: v for k, v in method.items() if k != "name" and (k in rec["params"] or k in extra)}
    name = method.get("name", rec["params"].get("method"))
    return {"run_id": rec["run_id"], "model": cfg.get("model", rec["params"].get("model")),
            "benchmark": cfg.get("benchmark", rec["params"].get("benchmark")),
            "method": name,
            "settings": ", ".join(f"{k}={v}" for k, v in hyper.items()),
            # one plotted line per method and named-option set (e.g. PruneVid with positions=original)
            "variant": f"{name} ({', '.join(f'{k}={v}' for k, v in extra.items())})" if extra else name,
            "retained": tokens.get("retained_ratio"), "flops": flops.get("ratio_vs_unpruned"), "score": score,
            "n": (res.get("n_samples") or {}).get("done"), "prefill_ms": (res.get("timing") or {}).get("prefill_ms"),
            "by_category": metrics.get("by_category") or {},
            "status": "failed" if rec["failure"] else ("done" if rec["results"] else "missing"),
            "error": (rec["failure"] or {}).get("error")}


def _plots(rows: list, out_dir: str) -> list:
    ok = [r for r in rows if r["status"] == "done" and r["score"] is not None]
    made = []
    if not ok:
        return made
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns
    df = pd.DataFrame(ok)
    for x, label, fname in (("retained", "retained visual tokens (fraction)", "accuracy_vs_retention.png"),
                            ("flops", "LLM prefill FLOPs (x unpruned)", "accuracy_vs_flops.png")):
        sub = df.dropna(subset=[x])
        if sub.empty:
            continue
        fig, ax = plt.subplots(figsize=(7.5, 3.6))
        style = "benchmark" if sub["benchmark"].nunique() > 1 else None
        sns.lineplot(data=sub.sort_values(x), x=x, y="score", hue="variant", style=style, marker="o", ax=ax)
        ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8, frameon=False)   # beside the lines
        ax.set_xlabel(label)
        ax.set_ylabel("score")
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, fname), dpi=100)
        plt.close(fig)
        made.append(fname)
    return made


def _fmt(v, pct=False):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{100 * v:.1f}%" if pct else f"{v:.3g}"
    return html.escape(str(v))


def _chance(benchmark) -> dict:
    """Per-category chance level where the benchmark defines one (the synthetic benchmark), in percent."""
    if str(benchmark).startswith("synthetic"):
        from .synthetic import CHANCE
        return {k: 100 * v for k, v in CHANCE.items()}
    return {}


def _relative(rows: list) -> None:
    """Each row's score as a fraction of the unpruned score (method ``none``) of the same model and benchmark."""
    ref = {(r["model"], r["benchmark"]): r["score"] for r in rows
           if r["method"] == "none" and r["status"] == "done" and r["score"]}
    for r in rows:
        base = ref.get((r["model"], r["benchmark"]))
        r["relative"] = r["score"] / base if base and r["score"] is not None else None


def build_index(out_dir: str, title: str = "sweep", description: str = "") -> str:
    """Write ``out_dir/index.html`` from the cell folders under ``out_dir/runs``; returns its path."""
    rows = [_row(r) for r in collect(out_dir)]
    _relative(rows)
    images = _plots(rows, out_dir)
    rows = sorted(rows, key=lambda r: (str(r["benchmark"]), r["method"] != "none", str(r["method"]),
                                       -(r["retained"] or 0), str(r["settings"])))
    lines = []
    for r in rows:
        page = os.path.join("runs", f"{r['run_id']}.html")
        link = f'<a href="{html.escape(page)}">{html.escape(r["run_id"])}</a>' \
            if os.path.isfile(os.path.join(out_dir, page)) else html.escape(r["run_id"])
        status = r["status"] if not r["error"] else f'failed: {html.escape(r["error"])}'
        cls = ' class="failed"' if r["status"] != "done" else ""
        lines.append(f"<tr{cls}><td>{_fmt(r['method'])}</td><td>{_fmt(r['settings'])}</td><td>{_fmt(r['model'])}</td>"
                     f"<td>{_fmt(r['benchmark'])}</td><td>{_fmt(r['retained'], pct=True)}</td>"
                     f"<td>{_fmt(r['flops'])}{'×' if r['flops'] is not None else ''}</td><td>{_fmt(r['score'])}</td>"
                     f"<td>{_fmt(r['relative'], pct=True)}</td>"
                     f"<td>{_fmt(r['n'])}</td><td>{_fmt(r['prefill_ms'])}</td><td>{link}</td><td>{status}</td></tr>")
    # per-category accuracy, one table per benchmark (chance row where the benchmark defines it)
    cat_tables = []
    for bench in dict.fromkeys(str(r["benchmark"]) for r in rows):
        sub = [r for r in rows if str(r["benchmark"]) == bench and r["by_category"]]
        cats = list(dict.fromkeys(c for r in sub for c in r["by_category"]))
        if not cats:
            continue
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cats)
        body = []
        chance = _chance(bench)
        if chance:
            body.append("<tr><td><i>chance</i></td><td></td><td></td>" +
                        "".join(f"<td><i>{_fmt(chance.get(c))}</i></td>" for c in cats) + "</tr>")
        for r in sub:
            body.append(f"<tr><td>{_fmt(r['method'])}</td><td>{_fmt(r['settings'])}</td>"
                        f"<td>{_fmt(r['retained'], pct=True)}</td>" +
                        "".join(f"<td>{_fmt(r['by_category'].get(c))}</td>" for c in cats) + "</tr>")
        cat_tables.append(f"<h2>Accuracy per category: {html.escape(bench)}</h2><table><tr><th>method</th>"
                          f"<th>settings</th><th>retained</th>{head}</tr>{''.join(body)}</table>")
    imgs = "".join(f'<figure><img src="{html.escape(i)}" alt="{html.escape(i)}"></figure>' for i in images)
    intro = "".join(f"<p>{html.escape(p.strip())}</p>" for p in str(description or "").split("\n\n") if p.strip())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)} · PruneVid Kit</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}tr.failed td{{background:#fdd}}figure{{display:inline-block}}</style>
</head><body><h1>{html.escape(title)}</h1>{intro}
<p>{len(rows)} cells; score = accuracy in percent (multiple choice) or the judge's average (0–5); "of unpruned" = score
/ the unpruned score of the same model and benchmark. Retained = visual tokens after all pruning / visual tokens of the
unpruned model (achieved, not the target); FLOPs = LLM prefill FLOPs relative to unpruned.</p>
<table><tr><th>method</th><th>settings</th><th>model</th><th>benchmark</th><th>retained</th><th>FLOPs</th>
<th>score</th><th>of unpruned</th><th>items</th><th>prefill ms</th><th>run</th><th>status</th></tr>
{''.join(lines)}</table>{imgs}{''.join(cat_tables)}</body></html>"""
    path = os.path.join(out_dir, "index.html")
    with open(path, "w") as f:
        f.write(page)
    return path


def record(out_dir: str, dest: str, *, title: str = "sweep", description: str = "", note: str = "") -> str:
    """Copy a finished sweep's small, reproducible part to ``dest`` (a curated, committed report): each cell's
    ``params.json`` / ``run_config.json`` / ``results.json`` / ``failed.json`` (not the samples, notebooks or
    per-cell pages), the index rebuilt there with its plots, and ``RECORD.md`` saying when, where, from which commit
    and with which model weights. Returns the
    index path."""
    import datetime
    import platform
    import shutil
    from .results import git_hash, versions
    src_runs = os.path.join(out_dir, "runs")
    cells = [d for d in sorted(os.listdir(src_runs)) if os.path.isdir(os.path.join(src_runs, d))] \
        if os.path.isdir(src_runs) else []
    if not cells:
        raise ValueError(f"{out_dir} holds no cells to record (run the sweep first)")
    if os.path.isdir(dest):
        shutil.rmtree(dest)
    weights = {}                                   # model -> the weights fingerprints its cells ran with
    for rid in cells:
        os.makedirs(os.path.join(dest, "runs", rid))
        for name in ("params.json", "run_config.json", "results.json", "failed.json"):
            src = os.path.join(src_runs, rid, name)
            if os.path.isfile(src):
                shutil.copyfile(src, os.path.join(dest, "runs", rid, name))
                if name == "run_config.json":
                    with open(src) as f:
                        rc = json.load(f)
                    weights.setdefault(rc.get("model"), set()).add(rc.get("weights"))
    index = build_index(dest, title=title, description=description)
    models_line = "; ".join(f"{m}: {', '.join(sorted(map(str, w)))}" for m, w in sorted(weights.items(), key=str))
    with open(os.path.join(dest, "RECORD.md"), "w") as f:
        f.write(f"# {title}: recorded run\n\n- recorded: {datetime.date.today().isoformat()}\n"
                f"- commit: {git_hash() or 'unknown'}\n- model weights (run_config.json): {models_line or 'unknown'}\n"
                f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, "
                f"{platform.system()}\n- versions: {json.dumps(versions())}\n- cells: {len(cells)} (results.json "
                f"per cell; per-sample logs and notebooks are not kept)\n" + (f"\n{note.strip()}\n" if note else ""))
    return index


# ------------------------------------------------------------------------------------------------ CLI
def add_parser(sub) -> None:
    p = sub.add_parser("report", help="run a sweep of notebook cells with papermill and build reports/<sweep>/index.html")
    p.add_argument("--sweep", required=True, help="sweep YAML file (see prunevid/report.py)")
    p.add_argument("--reports", default="reports", help="reports root folder (default: reports)")
    p.add_argument("--kernel", default=None, help="Jupyter kernel (default: prunevid-kit if installed, else python3)")
    p.add_argument("--force", action="store_true", help="rerun every cell from scratch (clears its folder)")
    p.add_argument("--index-only", action="store_true", help="only rebuild index.html from the existing runs")
    p.add_argument("--record", metavar="DEST", default=None,
                   help="copy the finished sweep's results (no samples or notebooks) to DEST with its index and a "
                        "RECORD.md, for a curated, committed report (e.g. reports/demo-recorded/demo)")
    p.set_defaults(func=run)


def run(args) -> int:
    sweep = load_sweep(args.sweep)
    out_dir = os.path.join(args.reports, sweep["name"])
    if args.index_only:
        print(build_index(out_dir, title=sweep["name"], description=sweep.get("description", "")))
        return 0
    if args.record:
        print(record(out_dir, args.record, title=sweep["name"], description=sweep.get("description", "")))
        return 0
    status = run_sweep(sweep, args.reports, kernel=args.kernel, force=args.force)
    failed = [k for k, v in status.items() if v == "failed"]
    print(f"[report] {os.path.join(out_dir, 'index.html')}: {len(status) - len(failed)} ok, {len(failed)} failed")
    return 1 if failed else 0
