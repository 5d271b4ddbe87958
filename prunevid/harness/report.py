"""Batch runs and HTML reports: ``python -m prunevid report --sweep SWEEP.yaml``.

A sweep file names a notebook (default: the benchmark notebook) and the parameter cells to run it with:

```yaml
name: demo                        # reports/<name>/
notebook: notebooks/10_benchmark.ipynb
base: {benchmark: synthetic, limit: 40}          # every cell gets these
grid: {method: [none, prunevid], alpha: [0.2, 0.4]}   # cartesian product
cells: [{method: fastv, retain: 0.25}]           # extra explicit cells (optional)
# {method: visionzip, flops: 0.25}: matched compute, retain solved per prompt for 25% of the prefill FLOPs
description: what the sweep shows               # optional; shown at the top of index.html
reference: {method: none}                        # optional; the cell every other is compared with (default)
```

Each cell is executed with papermill into ``reports/<name>/runs/<run_id>/`` (its ``output_dir`` parameter),
which must end up holding the run's ``results.json``. Cells whose ``results.json`` is complete are skipped, so a
rerun resumes a sweep (an interrupted cell's interim ``results.json``, ``"complete": false``, is resumed). A
failing cell is recorded (``failed.json``) and shown as failed in the index; the other cells still run. Each
executed notebook is exported to ``runs/<run_id>.html`` without code cells, and ``index.html`` compares the cells
of the sweep file as it is now (folders of other settings, e.g. an earlier ``--limit``, stay on disk but are left
out): a table like the paper's and accuracy-vs-retention / accuracy-vs-FLOPs plots.

"Of unpruned" divides a cell's score by the unpruned (``none``) cell's score of the same model and benchmark only
when both scored the same items (``items_sha1`` of results.json, or for older results both complete over the
same number of items); otherwise the index says it cannot compare. The plots draw one point per cell, one fixed
colour per method (``METHOD_COLOURS``) in every plot, one line (and marker) per method and settings other than
the budget (``retain``), and reference lines for the unpruned score and, where the benchmark defines it, chance.

Every score is shown with its 95% interval (``metrics.accuracy_ci95``, Wilson; judge scores: normal
approximation), drawn as error bars. Every done cell is compared with the sweep's reference cell (``reference``,
the unpruned ``none`` cell by default) of its model and benchmark on the same item ids, read from both cells'
``samples.jsonl``: the accuracy difference with a paired-bootstrap 95% interval (10,000 resamples, seed 0) and the
exact two-sided McNemar p-value, Holm-adjusted across the page's comparisons (``prunevid.statistics``). A cell is
"worse than the reference" only at an adjusted p below 0.05; otherwise the page says "not shown different
(n = ...)", never "equal"; one generated sentence per budget (``budget_sentences``) says so from the numbers.
No column of absolute times: cells run minutes apart on a shared machine are not comparable; a cell's speed
appears only as a ratio measured side by side inside the cell (``_in_cell_speedup``), and ``bench`` measures speed.

Cells with a ``flops`` target (matched compute: the runner's ``--flops``, ``prunevid.harness.budget``) get a section of
their own beside the retained-tokens view: a table and a plot (``accuracy_at_matched_flops.png``, the same
``plot_panels`` / ``plot_figure`` with the achieved paper-formula FLOPs ratio on x) of those cells and the
reference, their paired comparisons (the same ``_paired`` pass and Holm family as every other cell) and one
sentence per FLOPs target. A cell whose target the method cannot reach fails with the reason, shown there.
"""
from __future__ import annotations

import hashlib
import html
import itertools
import json
import os
import shutil
import traceback
from typing import Optional

from ..statistics import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from .results import budget_measure, is_complete

DEFAULT_NOTEBOOK = os.path.join("notebooks", "10_benchmark.ipynb")


# ------------------------------------------------------------------------------------------------ sweeps
def load_sweep(path: str) -> dict:
    import yaml
    if not os.path.isfile(path):
        raise FileNotFoundError(f"sweep file not found: {path}")
    with open(path) as f:
        sweep = yaml.safe_load(f) or {}
    unknown = set(sweep) - {"name", "notebook", "base", "grid", "cells", "kernel", "description", "reference"}
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


def export_html(executed_path: str, html_path: str, *, code: bool = False) -> None:
    """Executed notebook -> HTML without code cells (outputs and markdown only); ``code=True`` keeps every cell's
    code as well (the course pages, ``prunevid.harness.course``)."""
    import nbformat
    from nbconvert import HTMLExporter
    nb = nbformat.read(executed_path, as_version=4)
    exporter = HTMLExporter(exclude_input=not code, exclude_input_prompt=not code, exclude_output_prompt=True)
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
    from ..models import fingerprint_of
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
        done = is_complete(os.path.join(run_dir, "results.json"))
        if not done and os.path.isfile(os.path.join(run_dir, "results.json")):
            log(f"[report] {i}/{len(cells)} {rid}: interim results of an interrupted run: resuming")
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
    build_index(out_dir, title=sweep["name"], description=sweep.get("description", ""),
                cells=[cell_id(c) for c in cells], reference=sweep.get("reference"))
    return status


# ------------------------------------------------------------------------------------------------ index
def _cell_folders(out_dir: str) -> list:
    runs_dir = os.path.join(out_dir, "runs")
    if not os.path.isdir(runs_dir):
        return []
    return [rid for rid in sorted(os.listdir(runs_dir)) if os.path.isdir(os.path.join(runs_dir, rid))]


def collect(out_dir: str, cells: Optional[list] = None) -> list:
    """One record per cell folder: its params, results (or None) and failure (or None). ``cells`` (cell ids)
    keeps only those folders: the cells of the sweep file as it is now."""
    runs_dir = os.path.join(out_dir, "runs")
    records = []
    wanted = None if cells is None else set(cells)
    for rid in _cell_folders(out_dir):
        d = os.path.join(runs_dir, rid)
        if wanted is not None and rid not in wanted:
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
    # one plotted series per method and settings other than the budget: cells differing in anything else
    # (selected_layer, a named option, ...) get their own line and marker, never one averaged point
    series_set = {k: v for k, v in hyper.items() if k not in BUDGET_KEYS}
    # a matched-compute cell (``flops`` target): retain was solved per prompt, so its settings name the target
    flops_target = flops.get("target", rec["params"].get("flops"))
    settings = ", ".join(f"{k}={v}" for k, v in hyper.items())
    if flops_target is not None:
        settings = ", ".join(x for x in (f"flops={flops_target}", settings) if x)
    # the papers' FLOPs ratio (text included) the target is set in; the unpruned cell is 1 by definition
    flops_paper = flops.get("ratio_paper_vs_unpruned")
    if flops_paper is None and name == "none" and flops.get("ratio_vs_unpruned") == 1.0:
        flops_paper = 1.0
    n = res.get("n_samples") or {}
    complete = res.get("complete", True) is not False
    return {"run_id": rec["run_id"], "model": cfg.get("model", rec["params"].get("model")),
            "benchmark": cfg.get("benchmark", rec["params"].get("benchmark")),
            "method": name,
            "settings": settings,
            # one plotted line per method and named-option set (e.g. PruneVid with positions=original)
            "variant": f"{name} ({', '.join(f'{k}={v}' for k, v in extra.items())})" if extra else name,
            "series": f"{name} ({', '.join(f'{k}={v}' for k, v in series_set.items())})" if series_set else name,
            # a method that cuts at several layers is placed at its per-layer average (what its budget and FLOPs
            # follow), the others at their retained ratio
            "retained": (tokens.get("budget_ratio") if budget_measure(name) == "layer_average"
                         else tokens.get("retained_ratio")),
            "flops": flops.get("ratio_vs_unpruned"), "score": score,
            "score_kind": "accuracy" if metrics.get("accuracy") is not None else "judge",
            "n": n.get("done"), "total": n.get("total"), "items_sha1": res.get("items_sha1"),
            "score_ci95": _score_interval(metrics),
            # speed only as a ratio measured side by side inside the cell; absolute ms never become a column
            "speedup": _in_cell_speedup(res.get("timing") or {}),
            "budget": flops_target if flops_target is not None else hyper.get("retain", rec["params"].get("retain")),
            "budget_kind": "flops" if flops_target is not None else "retain",
            "flops_paper": flops_paper, "flops_retain": (flops.get("retain") or {}).get("mean"),
            "flops_short": (f"{flops['unreachable_items']} item(s): {flops.get('unreachable_note')}"
                            if flops.get("unreachable_items") else None),
            "params": rec["params"],
            "by_category": metrics.get("by_category") or {},
            "by_category_ci95": _category_intervals(metrics),
            "by_category_counts": metrics.get("by_category_counts") or {},
            "status": "failed" if rec["failure"] else ("done" if rec["results"] and complete else
                                                       "incomplete" if rec["results"] else "missing"),
            "error": (rec["failure"] or {}).get("error") or
            ("interrupted: interim results (rerun the sweep to resume)" if rec["results"] and not complete else None)}


def _score_interval(metrics: dict) -> Optional[list]:
    """The 95% interval of a cell's score: ``accuracy_ci95`` (Wilson), else for results written before it existed
    the Wilson interval from ``n_scored`` and the accuracy, else the judge's ``scores_ci95.avg``."""
    from ..statistics import wilson_interval
    if metrics.get("accuracy") is not None:
        if metrics.get("accuracy_ci95"):
            return list(metrics["accuracy_ci95"])
        n = metrics.get("n_scored")
        return wilson_interval(round(metrics["accuracy"] * n / 100), n) if n else None
    return ((metrics.get("scores_ci95") or {}).get("avg")) if isinstance(metrics.get("scores_ci95"), dict) else None


def _category_intervals(metrics: dict) -> dict:
    """``by_category_ci95``, or for older results the Wilson intervals from ``by_category_counts``."""
    from ..statistics import wilson_interval
    if metrics.get("by_category_ci95"):
        return dict(metrics["by_category_ci95"])
    counts = metrics.get("by_category_counts") or {}
    return {c: wilson_interval(v["correct"], v["total"]) for c, v in counts.items()
            if isinstance(v, dict) and "correct" in v and v.get("total")}


def _in_cell_speedup(timing: dict) -> Optional[float]:
    """Unpruned / pruned prefill time measured side by side inside one cell (same machine, same process):
    ``timing.prefill_speedup`` where a run records it, else ``prefill_ms_unpruned / prefill_ms`` where both were
    timed interleaved in the cell (``python -m prunevid clip``); None otherwise — a cell's absolute ``prefill_ms``
    is never compared with another cell's."""
    if isinstance(timing.get("prefill_speedup"), (int, float)):
        return float(timing["prefill_speedup"])
    ref, ms = timing.get("prefill_ms_unpruned"), timing.get("prefill_ms")
    if isinstance(ref, (int, float)) and isinstance(ms, (int, float)) and ms > 0:
        return ref / ms
    return None


# One colour per method, the same in every plot whatever the data's order (tab10 and tab20's light shades; methods
# not listed get a stable colour from their name). "none" is black: it is also the unpruned reference line.
METHOD_COLOURS = {
    "none": "#000000", "prunevid": "#d62728", "fastv": "#1f77b4", "visionzip": "#ff7f0e", "vidcom2": "#2ca02c",
    "prumerge": "#9467bd", "prumerge+": "#8c564b", "dycoke": "#bcbd22", "lookm": "#17becf", "random": "#7f7f7f",
    "fastvid": "#aec7e8", "holitom": "#ffbb78", "framefusion": "#98df8a", "divprune": "#c5b0d5", "pdrop": "#e377c2",
    "oracle": "#b8860b",       # dark gold: a reference line (the ceiling of token selection), not a contender
}
# Methods that are references rather than contenders, with what the index and the plot legend say of them: the
# oracle reads the synthetic generator's object masks (``prunevid.methods.oracle``).
ORACLES = {"oracle": "oracle: the ceiling of token selection, reads the generator's object masks"}
_SPARE_COLOURS = ("#ff9896", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5", "#393b79", "#637939", "#8c6d31")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LINESTYLES = ("-", "--", "-.", ":")
# the sweep's budget knob: cells that differ only here are points of one line
BUDGET_KEYS = ("retain",)
X_AXES = {"retained": ("retained visual tokens (% of the unpruned model's, achieved)", "accuracy_vs_retention.png"),
          "flops": ("LLM prefill FLOPs (% of the unpruned prefill's)", "accuracy_vs_flops.png"),
          # the matched-compute panel: only cells with a FLOPs target (and the reference), at the ratio they achieved
          "flops_paper": ("LLM prefill FLOPs (% of the unpruned prefill's; paper formula, text included; achieved)",
                          "accuracy_at_matched_flops.png")}


def method_colour(method: str) -> str:
    name = str(method)
    if name in METHOD_COLOURS:
        return METHOD_COLOURS[name]
    return _SPARE_COLOURS[int(hashlib.sha1(name.encode()).hexdigest(), 16) % len(_SPARE_COLOURS)]


def _overall_chance(benchmark, row: dict) -> Optional[float]:
    """Chance accuracy in percent of a cell's items where the benchmark defines one per category (synthetic):
    the per-category chance weighted by the cell's item counts."""
    per_cat = _chance(benchmark)
    if not per_cat:
        return None
    counts = {c: (v or {}).get("total") for c, v in (row.get("by_category_counts") or {}).items()}
    counts = {c: n for c, n in counts.items() if c in per_cat and n}
    if counts:
        return sum(per_cat[c] * n for c, n in counts.items()) / sum(counts.values())
    cats = [c for c in row.get("by_category") or {} if c in per_cat]
    return sum(per_cat[c] for c in cats) / len(cats) if cats else None


def plot_panels(rows: list, x: str) -> list:
    """What a plot against ``x`` ("retained" or "flops") draws, one panel per (benchmark, model): every series
    (label, method, colour, marker, linestyle, points [(x %, score, run_id, [low, high] or None)] sorted by x; the
    interval is the score's 95% one: Wilson for accuracy, normal for judge scores), the unpruned reference
    (the ``none`` cell on the same items as most cells) and chance. One point per done cell."""
    ok = [r for r in rows if r["status"] == "done" and r["score"] is not None and r.get(x) is not None]
    by_panel: dict = {}
    for r in ok:
        by_panel.setdefault((str(r["benchmark"]), str(r["model"])), []).append(r)
    panels = []
    for (bench, model), rs in by_panel.items():
        groups: dict = {}
        for r in rs:
            groups.setdefault((str(r["method"]), r.get("series") or str(r["method"])), []).append(r)
        series, per_method = [], {}
        for (method, label) in sorted(groups, key=lambda k: (k[0] != "none", k[0], k[1])):
            i = per_method.get(method, 0)
            per_method[method] = i + 1
            pts = sorted(((100 * g[x], g["score"], g["run_id"], g.get("score_ci95")) for g in groups[(method, label)]),
                         key=lambda p: p[:2])
            series.append({"label": f"{label} (ceiling)" if method in ORACLES else label, "method": method,
                           "colour": method_colour(method),
                           "marker": MARKERS[i % len(MARKERS)], "linestyle": LINESTYLES[i % len(LINESTYLES)],
                           "points": pts})
        nones = [r for r in rs if r["method"] == "none"]
        ref = max(nones, key=lambda n: sum(_same_items(n, r) for r in rs)) if nones else None
        panels.append({"benchmark": bench, "model": model, "series": series,
                       "unpruned": ref["score"] if ref else None,
                       "chance": _overall_chance(bench, ref or rs[0]),
                       "score_kind": rs[0].get("score_kind", "accuracy")})
    return panels


def plot_figure(rows: list, x: str):
    """The matplotlib figure of ``plot_panels(rows, x)`` (None when nothing can be drawn)."""
    panels = plot_panels(rows, x)
    if not panels:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(panels), figsize=(9.5 * len(panels), 4.8), squeeze=False)
    for ax, p in zip(axes[0], panels):
        for s in p["series"]:
            xs, ys = [q[0] for q in s["points"]], [q[1] for q in s["points"]]
            hollow = s["method"] == "none"          # drawn open, so a point under it stays visible
            ax.plot(xs, ys, color=s["colour"], marker=s["marker"], linestyle=s["linestyle"] if len(xs) > 1 else "none",
                    markersize=11 if hollow else 6, markerfacecolor="none" if hollow else s["colour"],
                    markeredgewidth=1.6 if hollow else 1.0, label=s["label"], zorder=3)
            bars = [(q[0], q[1], q[3]) for q in s["points"] if q[3]]      # the score's 95% interval
            if bars:
                # clamped at 0: a bound computed in floating point can sit 1e-14 inside the score (Wilson's upper
                # bound at 10 of 10 is 99.99999999999999), which matplotlib refuses as a negative error
                ax.errorbar([b[0] for b in bars], [b[1] for b in bars],
                            yerr=[[max(0.0, b[1] - b[2][0]) for b in bars], [max(0.0, b[2][1] - b[1]) for b in bars]],
                            fmt="none",
                            ecolor=s["colour"], elinewidth=0.9, capsize=2.5, alpha=0.55, zorder=2)
        if p["unpruned"] is not None:
            ax.axhline(p["unpruned"], color=METHOD_COLOURS["none"], linestyle="--", linewidth=1,
                       label=f"unpruned ({p['unpruned']:.1f})", zorder=1)
        if p["chance"] is not None:
            ax.axhline(p["chance"], color="0.55", linestyle=":", linewidth=1.2, label=f"chance ({p['chance']:.1f})",
                       zorder=1)
        _mark_overlaps(ax, p["series"])
        ax.set_xlabel(X_AXES[x][0])
        ax.set_ylabel("accuracy (% of items; bars: 95% Wilson interval)" if p["score_kind"] == "accuracy"
                      else "judge score (0-5; bars: 95% normal interval)")
        ax.set_title(f"{p['benchmark']} · {p['model']}", fontsize=10)
        ax.grid(alpha=0.25)
        ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=7, frameon=False)   # beside the lines
    fig.tight_layout()
    return fig


def _mark_overlaps(ax, series: list) -> None:
    """Name the series whose points coincide (e.g. ``none`` and ``lookm``: Look-M keeps every prefill token)."""
    spots: dict = {}
    for s in series:
        for px, py, *_ in s["points"]:
            spots.setdefault((round(px, 0), round(py, 0)), []).append((px, py, s["label"]))
    for hits in spots.values():
        labels = list(dict.fromkeys(h[2] for h in hits))
        if len(labels) > 1:
            right = hits[0][0] > 70          # near the right edge: the text goes to the left of the point
            ax.annotate(" = ".join(labels), (hits[0][0], hits[0][1]), xytext=(-8 if right else 6, -12),
                        textcoords="offset points", ha="right" if right else "left", fontsize=7, color="0.25")


def matched_flops_rows(rows: list) -> list:
    """The rows of the matched-compute panel: cells with a FLOPs target, and the reference cells (``none``, or the
    sweep's ``reference``) of the models and benchmarks they ran on; ``[]`` when no cell has a target."""
    hit = [r for r in rows if r.get("budget_kind") == "flops"]
    where = {(str(r["model"]), str(r["benchmark"])) for r in hit}
    refs = [r for r in rows if (r.get("is_reference") or r["method"] == "none") and r.get("budget_kind") != "flops"
            and (str(r["model"]), str(r["benchmark"])) in where]
    return hit + refs if hit else []


def _plots(rows: list, out_dir: str) -> list:
    made = []
    for x, (_, fname) in X_AXES.items():
        # the retained-tokens and FLOPs views draw every cell; the matched-compute panel its own cells only
        fig = plot_figure(matched_flops_rows(rows) if x == "flops_paper" else rows, x)
        if fig is None:
            continue
        fig.savefig(os.path.join(out_dir, fname), dpi=100)
        import matplotlib.pyplot as plt
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
    """Per-category chance level where the benchmark defines one (``Benchmark.chance``: the synthetic one), in
    percent; ``{}`` for a name that is not a registered benchmark."""
    from .. import benchmarks
    try:
        return benchmarks.get(str(benchmark)).chance()
    except ValueError:
        return {}


def _same_items(a: dict, b: dict) -> bool:
    """Whether two cells scored the same items: equal ``items_sha1`` where both results carry it, else (older
    results) both complete over the same number of items (a benchmark's first N)."""
    if a is b:
        return True
    if a.get("items_sha1") and b.get("items_sha1"):
        return a["items_sha1"] == b["items_sha1"]
    return bool(a.get("total")) and a.get("n") == a.get("total") == b.get("total") == b.get("n")


def _relative(rows: list) -> None:
    """Each row's score as a fraction of the unpruned score (method ``none``) of the same model and benchmark on
    the same items; ``relative_note`` says why there is none when an unpruned cell exists but scored other items."""
    refs = [r for r in rows if r["method"] == "none" and r["status"] == "done" and r["score"]]
    for r in rows:
        r["relative"], r["relative_note"] = None, None
        if r["score"] is None or r["status"] != "done":
            continue
        same = [b for b in refs if (b["model"], b["benchmark"]) == (r["model"], r["benchmark"])]
        paired = [b for b in same if _same_items(b, r)]
        if paired:
            r["relative"] = r["score"] / paired[0]["score"]
        elif same:
            r["relative_note"] = (f"not comparable: the unpruned cell scored other items ({same[0]['n']} of "
                                  f"{same[0]['total']} vs {r['n']} of {r['total']} here)")


# the sweep's reference cell when the sweep file names none (its ``reference`` key): the unpruned run
DEFAULT_REFERENCE = {"method": "none"}
SIGNIFICANCE = 0.05              # family-wise, after Holm's adjustment across the sweep's comparisons


def _is_reference(r: dict, reference: dict) -> bool:
    """Whether a row's cell has every parameter of ``reference`` (``method`` also matches the recorded name)."""
    for key, value in reference.items():
        have = r["params"].get(key, r["method"] if key == "method" else None)
        if json.dumps(have, sort_keys=True, default=str) != json.dumps(value, sort_keys=True, default=str):
            return False
    return True


class _NotPaired(ValueError):
    """Why two cells cannot be paired: the message in full, ``short`` for the per-budget sentence."""

    def __init__(self, message: str, short: str):
        super().__init__(message)
        self.short = short


def _outcomes(out_dir: str, r: dict) -> dict:
    """{item id: correct} of a cell's items with a public answer, from its ``samples.jsonl`` (read as the runner
    does: ``results.RunWriter.read_samples``); ``_NotPaired`` naming why not."""
    from .results import RunWriter, items_digest
    folder = os.path.join(out_dir, "runs", r["run_id"])
    if not os.path.isfile(os.path.join(folder, "samples.jsonl")):
        raise _NotPaired(f"{r['run_id']} has no samples.jsonl (the per-item log) in its folder",
                         "no samples.jsonl to pair items")
    rows = RunWriter(folder).read_samples()
    if r.get("items_sha1") and items_digest(rows) != r["items_sha1"]:
        raise _NotPaired(f"{r['run_id']}'s samples.jsonl holds other items than its results.json",
                         "samples.jsonl and results.json differ")
    return {str(x["id"]): bool(x.get("correct")) for x in rows if x.get("answer") is not None}


class _OutcomeReader:
    """``_outcomes`` read once per cell: the paired comparisons and the ranking of one index share it (a recorded
    study's per-item logs run to tens of MB). Calling it raises the cell's ``_NotPaired`` every time it is asked."""

    def __init__(self, out_dir: str):
        self.out_dir, self.cache = out_dir, {}

    def __call__(self, r: dict) -> dict:
        if r["run_id"] not in self.cache:
            try:
                self.cache[r["run_id"]] = _outcomes(self.out_dir, r)
            except ValueError as e:
                self.cache[r["run_id"]] = e
        got = self.cache[r["run_id"]]
        if isinstance(got, Exception):
            raise got
        return got


def _paired(rows: list, out_dir: str, reference: Optional[dict] = None,
            reader: Optional[_OutcomeReader] = None) -> None:
    """Each done cell against the reference cell of its model and benchmark (``reference``: cell parameters,
    default ``DEFAULT_REFERENCE``, the unpruned run) on the same item ids: ``row["paired"]`` =
    ``statistics.compare_paired`` (difference in points with its paired-bootstrap 95% interval, exact McNemar p)
    plus ``p_holm`` (Holm across every comparison of the index) and ``verdict``; ``row["paired_note"]`` says
    why a cell has none. The reference cell gets ``is_reference``."""
    from ..statistics import compare_paired, holm_adjust
    reference = dict(reference or DEFAULT_REFERENCE)
    for r in rows:
        r["paired"], r["paired_note"], r["paired_reason"], r["is_reference"] = None, None, None, False
    done = [r for r in rows if r["status"] == "done" and r["score"] is not None]
    panels: dict = {}
    for r in done:
        panels.setdefault((str(r["model"]), str(r["benchmark"])), []).append(r)
    outcomes = reader or _OutcomeReader(out_dir)
    wanted = ", ".join(f"{k}={v}" for k, v in reference.items())
    compared = []
    for rs in panels.values():
        refs = [r for r in rs if _is_reference(r, reference)]
        if not refs:
            for r in rs:
                r["paired_note"] = f"no reference cell ({wanted}) of this model and benchmark"
                r["paired_reason"] = "no reference cell"
            continue
        ref = max(refs, key=lambda n: sum(_same_items(n, r) for r in rs))     # as the plots' unpruned line
        ref["is_reference"] = True
        label = ref["variant"] if ref["method"] != "none" else "unpruned"
        for r in rs:
            if r is ref:
                continue
            if r["score_kind"] != "accuracy" or ref["score_kind"] != "accuracy":
                r["paired_note"] = r["paired_reason"] = "paired comparisons are made for accuracy only"
                continue
            try:
                r["paired"] = dict(compare_paired(outcomes(r), outcomes(ref)), reference=ref["run_id"],
                                   reference_label=label)
                compared.append(r)
            except ValueError as e:
                r["paired_note"] = f"cannot compare with the reference ({ref['run_id']}): {e}"
                r["paired_reason"] = getattr(e, "short", "scored other items than the reference"
                                             if "different items" in str(e) else str(e))
    for r, adjusted in zip(compared, holm_adjust([r["paired"]["p"] for r in compared])):
        c = r["paired"]
        c["p_holm"] = adjusted
        if adjusted < SIGNIFICANCE:
            c["verdict"] = f"{'worse' if c['diff'] < 0 else 'better'} than the reference"
        else:
            c["verdict"] = f"not shown different (n = {c['n']})"


def rankings(rows: list, out_dir: str, reader: Optional[_OutcomeReader] = None) -> list:
    """The cells of each budget (a retain or a prefill-FLOPs target, per model and benchmark) ranked by accuracy, with
    every pair compared on the same items: one dict per target with at least two rankable cells, ``benchmark``,
    ``model``, ``kind`` ("retain" or "flops"), ``budget``, ``cells``
    (the rows, best first), ``pairs`` ({(i, j): comparison} for i < j in that order: ``diff`` (i minus j, points),
    ``b`` / ``c`` (items right in i only / in j only), exact McNemar ``p``, ``p_holm`` (Holm across every pair of
    this target) and ``resolved`` (``p_holm`` below ``SIGNIFICANCE``); adjacent pairs add ``diff_ci95``, the
    paired-bootstrap interval) and ``unranked`` ({series: why} for cells that could not be paired with the best).
    Ties in accuracy keep the table's order (series, settings)."""
    from ..statistics import compare_paired, holm_adjust, mcnemar_exact_p
    read = reader or _OutcomeReader(out_dir)
    groups: dict = {}
    for r in rows:
        if (r["status"] == "done" and r["score"] is not None and r["score_kind"] == "accuracy"
                and isinstance(r.get("budget"), (int, float))):
            key = (str(r["benchmark"]), str(r["model"]), r.get("budget_kind", "retain"), r["budget"])
            groups.setdefault(key, []).append(r)
    out = []
    for (bench, model, kind, budget), rs in sorted(groups.items(),
                                                   key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] != "retain", -kv[0][3])):
        rs = sorted(rs, key=lambda r: (-r["score"], str(r["series"]), str(r["settings"])))
        outcomes, unranked = {}, {}
        for r in rs:
            try:
                outcomes[r["run_id"]] = read(r)
            except ValueError as e:
                unranked[r["series"]] = str(e)
        ranked = [r for r in rs if r["run_id"] in outcomes]
        if ranked:                      # the item set most cells scored (ties: the best cell's) is the ranking's
            sets = [frozenset(outcomes[r["run_id"]]) for r in ranked]
            ids = max(dict.fromkeys(sets), key=sets.count)
            for r, got in zip(ranked, sets):
                if got != ids:
                    unranked[r["series"]] = f"scored other items than the ranked cells ({len(got)} vs {len(ids)})"
            ranked = [r for r, got in zip(ranked, sets) if got == ids]
        if len(ranked) < 2:
            continue
        pairs = {}
        for i, j in itertools.combinations(range(len(ranked)), 2):
            a, b = outcomes[ranked[i]["run_id"]], outcomes[ranked[j]["run_id"]]
            if j == i + 1:                               # neighbours: the interval too (a bootstrap each)
                c = compare_paired(a, b)
            else:
                right_i = sum(1 for k in a if a[k] and not b[k])
                right_j = sum(1 for k in a if b[k] and not a[k])
                c = {"n": len(a), "diff": 100 * (right_i - right_j) / len(a), "b": right_i, "c": right_j,
                     "p": mcnemar_exact_p(right_i, right_j)}
            pairs[(i, j)] = c
        keys = list(pairs)
        for k, adjusted in zip(keys, holm_adjust([pairs[k]["p"] for k in keys])):
            pairs[k]["p_holm"] = adjusted
            pairs[k]["resolved"] = adjusted < SIGNIFICANCE
        out.append({"benchmark": bench, "model": model, "kind": kind, "budget": budget, "cells": ranked,
                    "pairs": pairs, "unranked": unranked})
    return out


def _ranking_section(groups: list) -> str:
    """The index's ranking section: per budget, the cells best first with the comparison to the next one down, and a
    matrix of every pair (the row's cell minus the column's, bold where resolved)."""
    if not groups:
        return ""
    several = len({(g["benchmark"], g["model"]) for g in groups}) > 1
    parts = ["<h2>Ranking at each budget</h2><p>The cells of one budget, a retain target or a prefill-FLOPs target "
             "(achieved ratios in the retained and FLOPs columns), best first, each pair compared on the same items: "
             "Δ = accuracy of the row's cell minus the other's, in points; p = exact McNemar, Holm-adjusted across "
             "every pair of that target (its "
             f"own family, apart from the comparisons with the reference above). A difference is <b>resolved</b> "
             f"where the adjusted p is below {SIGNIFICANCE:g}; an unresolved one is not shown at this number of "
             "items, which is not the same as no difference. Next to each cell: the comparison with the cell ranked "
             "just below it (paired-bootstrap 95% interval); the matrix gives every pair.</p>"]
    for g in groups:
        cells, pairs = g["cells"], g["pairs"]
        where = f"{g['benchmark']} · {g['model']}, " if several else ""
        n = pairs[(0, 1)]["n"]
        body = []
        for i, r in enumerate(cells):
            nxt = "<td>–</td><td>–</td><td>–</td>"
            if i + 1 < len(cells):
                c = pairs[(i, i + 1)]
                lo, hi = c["diff_ci95"]
                nxt = (f"<td>{c['diff']:+.1f} <small>[{lo:+.1f}, {hi:+.1f}]</small></td>"
                       f"<td>{html.escape(_p(c['p_holm']))} <small>({c['b']}+/{c['c']}−)</small></td>"
                       f"<td>{'resolved' if c['resolved'] else 'not resolved'}</td>")
            beats = sum(1 for j in range(i + 1, len(cells)) if pairs[(i, j)]["resolved"])
            body.append(f"<tr><td>{i + 1}</td><td>{html.escape(str(r['series']))}</td>"
                        f"<td>{_fmt(r['retained'], pct=True)}</td>"
                        f"<td>{_fmt(r.get('flops_paper') if r.get('flops_paper') is not None else r['flops'])}</td>"
                        f"<td>{_fmt(r['score'])}{_interval_text(r.get('score_ci95'))}</td>{nxt}"
                        f"<td>{beats} of {len(cells) - i - 1}</td></tr>")
        head = "".join(f"<th><small>{k + 1}</small></th>" for k in range(len(cells)))
        matrix = []
        for i in range(len(cells)):
            tds = []
            for j in range(len(cells)):
                if j <= i:
                    tds.append("<td></td>")
                    continue
                c = pairs[(i, j)]
                text = f"{c['diff']:+.1f}"
                tds.append(f'<td title="adjusted p {html.escape(_p(c["p_holm"]))}">'
                           + (f"<b>{text}</b>" if c["resolved"] else f"<small>{text}</small>") + "</td>")
            matrix.append(f"<tr><th><small>{i + 1}</small></th>{''.join(tds)}</tr>")
        unranked = "".join(f"<li>{html.escape(str(k))}: {html.escape(v)}</li>" for k, v in g["unranked"].items())
        what = "retain" if g["kind"] == "retain" else "prefill FLOPs"
        parts.append(f"<h3>{html.escape(where)}{what} {100 * g['budget']:g}% (target), {n} items</h3>"
                     "<table><tr><th>rank</th><th>cell</th><th>retained</th><th>FLOPs</th><th>accuracy [95% CI]</th>"
                     "<th>Δ vs next [95% CI]</th><th>p (Holm)</th><th>vs next</th><th>resolved above</th></tr>"
                     f"{''.join(body)}</table><p>Every pair (row minus column, points; <b>bold</b>: resolved):</p>"
                     f"<table><tr><th></th>{head}</tr>{''.join(matrix)}</table>"
                     + (f"<p>Not ranked:</p><ul>{unranked}</ul>" if unranked else ""))
    return "".join(parts)


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _diff_text(c: dict) -> str:
    lo, hi = c["diff_ci95"]
    p = _p(c["p_holm"])
    return f"{c['diff']:+.1f} points [{lo:+.1f}, {hi:+.1f}], adjusted p {p if p.startswith('<') else '= ' + p}"


def budget_sentences(rows: list, kind: Optional[str] = None) -> list:
    """One sentence per budget (the cells' ``retain`` target, or their ``flops`` target; cells without one form their
    own group) and model and benchmark, generated from the paired comparisons of ``_paired``: which cells are worse
    (or better) than the reference at Holm-adjusted p < 0.05, which are not shown different (with n), which could
    not be compared. ``kind`` ("retain" or "flops") keeps one kind of budget. A FLOPs sentence also gives the range
    of FLOPs ratios the cells achieved, the cells whose method stopped short of the target on some items, and the
    cells that could not run (a target beyond the method's reach, with the reason)."""
    groups: dict = {}
    for r in rows:
        r_kind = r.get("budget_kind", "retain")
        if kind is not None and r_kind != kind:
            continue
        failed = r_kind == "flops" and r.get("status") == "failed"
        if r.get("is_reference") or (r.get("paired") is None and r.get("paired_note") is None and not failed):
            continue
        groups.setdefault((str(r["benchmark"]), str(r["model"]), r_kind, r.get("budget")), []).append(r)
    several = len({k[:2] for k in groups}) > 1

    def order(key):
        b = key[3]
        return (key[0], key[1], key[2] != "retain", not isinstance(b, (int, float)),
                -(b if isinstance(b, (int, float)) else 0), str(b))

    out = []
    for key in sorted(groups, key=order):
        bench, model, r_kind, budget = key
        rs = sorted(groups[key], key=lambda r: (str(r["series"]), str(r["settings"])))
        failed = [r for r in rs if r.get("status") == "failed"]
        rs = [r for r in rs if r.get("status") != "failed"]
        paired = [r for r in rs if r["paired"]]
        ref = paired[0]["paired"]["reference_label"] if paired else "the reference"
        where = f"{bench} · {model}, " if several else ""
        if r_kind == "flops":
            got = [100 * r["flops_paper"] for r in rs if isinstance(r.get("flops_paper"), (int, float))]
            span = (f"; achieved {min(got):.1f}–{max(got):.1f}%" if len(got) > 1 and max(got) - min(got) >= 0.05
                    else f"; achieved {got[0]:.1f}%" if got else "")
            head = f"{where}prefill FLOPs {100 * budget:g}% (target{span}, paper formula)"
        else:
            head = (f"{where}retain {100 * budget:g}% (target)" if isinstance(budget, (int, float))
                    else f"{where}retain {budget}" if budget is not None else f"{where}cells without a retain target")
        name = (lambda r: r["series"]) if budget is not None else (lambda r: r["variant"] if not r["settings"]
                                                                   else f"{r['variant']}, {r['settings']}")
        parts = []
        for word in ("worse", "better"):
            hit = [r for r in paired if r["paired"]["verdict"].startswith(word)]
            if hit:
                parts.append(f"{word} than {ref} (Holm-adjusted exact McNemar p < {SIGNIFICANCE:g}): " +
                             "; ".join(f"{name(r)} ({_diff_text(r['paired'])})" for r in hit))
        rest = [r for r in paired if r["paired"]["verdict"].startswith("not shown")]
        for n in sorted({r["paired"]["n"] for r in rest}):
            same_n = [r for r in rest if r["paired"]["n"] == n]
            parts.append(f"not shown different from {ref} (n = {n}): " +
                         "; ".join(f"{name(r)} ({_diff_text(r['paired'])})" for r in same_n))
        nc = [r for r in rs if not r["paired"]]
        for reason in dict.fromkeys(r["paired_reason"] for r in nc):
            parts.append(f"not compared ({reason}): " + ", ".join(name(r) for r in nc if r["paired_reason"] == reason))
        short = [r for r in rs if r.get("flops_short")]
        if short:
            parts.append("short of the target: " + "; ".join(f"{name(r)} ({r['flops_short']})" for r in short))
        if failed:
            parts.append("could not run: " + "; ".join(f"{name(r)} ({r.get('error')})" for r in failed))
        out.append(f"{head}: " + "; ".join(parts) + ".")
    return out


def _interval_text(ci) -> str:
    return f" <small>[{ci[0]:.1f}, {ci[1]:.1f}]</small>" if ci else ""


def _paired_cells(r: dict) -> str:
    """The three paired-comparison cells of a row: difference [95% CI], adjusted p (raw p), verdict."""
    if r.get("is_reference"):
        return "<td>–</td><td>–</td><td><b>reference</b></td>"
    c = r.get("paired")
    if c is None:
        note = r.get("paired_note")
        return ("<td>–</td><td>–</td>" + (f'<td><span title="{html.escape(note)}">not compared</span></td>'
                                          if note else "<td>–</td>"))
    lo, hi = c["diff_ci95"]
    return (f"<td>{c['diff']:+.1f} <small>[{lo:+.1f}, {hi:+.1f}]</small></td>"
            f"<td>{html.escape(_p(c['p_holm']))} <small>({html.escape(_p(c['p']))}; {c['b']}+/{c['c']}−)</small></td>"
            f"<td>{html.escape(c['verdict'])}</td>")


def build_index(out_dir: str, title: str = "sweep", description: str = "", cells: Optional[list] = None,
                reference: Optional[dict] = None) -> str:
    """Write ``out_dir/index.html`` from the cell folders under ``out_dir/runs``; returns its path. ``cells``
    (cell ids of the sweep file as it is now) limits the index to them; the other folders are counted, not shown.
    ``reference`` (cell parameters, default ``{"method": "none"}``) picks the cell every other is compared with."""
    rows = [_row(r) for r in collect(out_dir, cells)]
    hidden = 0 if cells is None else len(set(_cell_folders(out_dir)) - set(cells))
    _relative(rows)
    reader = _OutcomeReader(out_dir)
    _paired(rows, out_dir, reference, reader)
    sentences = budget_sentences(rows, "retain")
    images = _plots(rows, out_dir)
    matched = _matched_flops_section(rows, out_dir, images)
    ranking = _ranking_section(rankings(rows, out_dir, reader))
    rows = sorted(rows, key=lambda r: (str(r["benchmark"]), r["method"] != "none", str(r["method"]),
                                       -(r["retained"] or 0), str(r["settings"])))
    speed = any(r.get("speedup") is not None for r in rows)      # a column only where some cell measured one
    lines = []
    for r in rows:
        page = os.path.join("runs", f"{r['run_id']}.html")
        link = f'<a href="{html.escape(page)}">{html.escape(r["run_id"])}</a>' \
            if os.path.isfile(os.path.join(out_dir, page)) else html.escape(r["run_id"])
        status = r["status"] if not r["error"] else f'failed: {html.escape(r["error"])}'
        cls = ' class="failed"' if r["status"] != "done" else ""
        speed_cell = (f"<td>{_fmt(r['speedup'])}{'×' if r['speedup'] is not None else ''}</td>" if speed else "")
        lines.append(f"<tr{cls}><td>{_method_cell(r['method'])}</td><td>{_fmt(r['settings'])}</td>"
                     f"<td>{_fmt(r['model'])}</td>"
                     f"<td>{_fmt(r['benchmark'])}</td><td>{_fmt(r['retained'], pct=True)}</td>"
                     f"<td>{_fmt(r['flops'])}{'×' if r['flops'] is not None else ''}</td>"
                     f"<td>{_fmt(r['score'])}{_interval_text(r.get('score_ci95'))}</td>"
                     f"<td>{_relative_cell(r)}</td>{_paired_cells(r)}"
                     f"<td>{_fmt(r['n'])}</td>{speed_cell}<td>{link}</td><td>{status}</td></tr>")
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
                        "".join(f"<td>{_fmt(r['by_category'].get(c))}"
                                f"{_interval_text(r['by_category_ci95'].get(c))}</td>" for c in cats) + "</tr>")
        cat_tables.append(f"<h2>Accuracy per category: {html.escape(bench)}</h2><p>Accuracy in percent with its 95% "
                          f"Wilson interval in brackets.</p><table><tr><th>method</th>"
                          f"<th>settings</th><th>retained</th>{head}</tr>{''.join(body)}</table>")
    imgs = "".join(f'<figure><img src="{html.escape(i)}" alt="{html.escape(i)}"></figure>' for i in images
                   if i != X_AXES["flops_paper"][1])                    # that one is drawn in its own section
    intro = "".join(f"<p>{html.escape(p.strip())}</p>" for p in str(description or "").split("\n\n") if p.strip())
    if hidden:
        intro += (f"<p><i>{hidden} other cell folder(s) in runs/ (other settings of this sweep file, e.g. an earlier "
                  f"--limit) are not shown.</i></p>")
    findings = ""
    if sentences:
        findings = ("<h2>Paired comparisons with the reference, per budget</h2><p>Generated from the numbers in the "
                    "table: each cell against the reference cell on the same items; a cell is worse (or better) than "
                    f"the reference only where its Holm-adjusted exact McNemar p is below {SIGNIFICANCE:g}; otherwise "
                    "the data do not show a difference at this number of items, which is not the same as no "
                    "difference.</p><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in sentences) + "</ul>")
    speed_head = "<th>prefill speed-up (in-cell)</th>" if speed else ""
    speed_text = (" Prefill speed-up = unpruned / pruned prefill time measured side by side inside the cell (same "
                  "machine, interleaved); absolute times are not compared across cells (they ran at different "
                  "times; use <code>python -m prunevid bench</code> for speed)." if speed else
                  " No timing column: absolute times of cells run at different times on a shared machine are not "
                  "comparable; <code>python -m prunevid bench</code> measures speed side by side.")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)} · PruneVid Kit</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}tr.failed td{{background:#fdd}}figure{{display:inline-block}}
small{{color:#555}}</style>
</head><body><h1>{html.escape(title)}</h1>{intro}
<p>{len(rows)} cells; score = accuracy in percent (multiple choice) or the judge's average (0–5), with its 95%
interval in brackets (Wilson score interval for accuracy, normal approximation for judge scores); "of unpruned" = score
/ the unpruned score of the same model and benchmark on the same items ("n/c" where the unpruned cell scored other
items). Δ = accuracy minus the reference cell's (unpruned unless the sweep names another) on the same items, in
points, with its paired-bootstrap 95% interval ({BOOTSTRAP_RESAMPLES:,} resamples of the items, seed
{BOOTSTRAP_SEED}); p = exact two-sided McNemar p-value on the items
the two got differently (right here and wrong there: +, the other way: −), Holm-adjusted across every comparison
of this page (raw p in brackets). Plots: one point per cell with its 95% interval as an error bar, one colour per
method, dashed line = unpruned, dotted = chance. Retained = visual tokens after all pruning / visual tokens of the
unpruned model (achieved, not the target); FLOPs = LLM prefill FLOPs relative to unpruned.{speed_text}</p>
<table><tr><th>method</th><th>settings</th><th>model</th><th>benchmark</th><th>retained</th><th>FLOPs</th>
<th>score [95% CI]</th><th>of unpruned</th><th>Δ vs reference [95% CI]</th><th>p (Holm)</th><th>paired verdict</th>
<th>items</th>{speed_head}<th>run</th><th>status</th></tr>
{''.join(lines)}</table>{findings}{ranking}{imgs}{matched}{''.join(cat_tables)}</body></html>"""
    path = os.path.join(out_dir, "index.html")
    with open(path, "w") as f:
        f.write(page)
    return path


def _matched_flops_section(rows: list, out_dir: str, images: list) -> str:
    """The matched-compute section of the index (empty without FLOPs cells): what the cells are, their table (target,
    achieved FLOPs, the solved retain, retained tokens, score, the paired comparison with the reference), the plot
    and one sentence per FLOPs target (``budget_sentences(rows, "flops")``)."""
    sub = matched_flops_rows(rows)
    if not sub:
        return ""
    from .budget import FLOPS_SLACK
    sub = sorted(sub, key=lambda r: (str(r["benchmark"]), str(r["model"]), r.get("budget_kind") == "flops",
                                     -(r["budget"] if isinstance(r.get("budget"), (int, float)) else 2),
                                     str(r["method"]), str(r["settings"])))
    lines = []
    for r in sub:
        page = os.path.join("runs", f"{r['run_id']}.html")
        link = f'<a href="{html.escape(page)}">{html.escape(r["run_id"])}</a>' \
            if os.path.isfile(os.path.join(out_dir, page)) else html.escape(r["run_id"])
        note = (f'failed: {html.escape(str(r["error"]))}' if r["status"] == "failed" else
                html.escape(f"short of the target on {r['flops_short']}") if r.get("flops_short") else
                html.escape(r["error"]) if r.get("error") else "")
        target = r["budget"] if r.get("budget_kind") == "flops" else None
        cls = ' class="failed"' if r["status"] != "done" else ""
        lines.append(f'<tr{cls}><td>{_method_cell(r["method"])}</td>'
                     f"<td>{_fmt(r['settings'])}</td><td>{_fmt(r['model'])}</td><td>{_fmt(r['benchmark'])}</td>"
                     f"<td>{_fmt(target, pct=True) if target is not None else '–'}</td>"
                     f"<td>{_fmt(r.get('flops_paper'), pct=True)}</td><td>{_fmt(r.get('flops_retain'), pct=True)}</td>"
                     f"<td>{_fmt(r['retained'], pct=True)}</td>"
                     f"<td>{_fmt(r['score'])}{_interval_text(r.get('score_ci95'))}</td>{_paired_cells(r)}"
                     f"<td>{_fmt(r['n'])}</td><td>{link}</td><td>{note}</td></tr>")
    fname = X_AXES["flops_paper"][1]
    fig = f'<figure><img src="{html.escape(fname)}" alt="{html.escape(fname)}"></figure>' if fname in images else ""
    sentences = budget_sentences(rows, "flops")
    said = ("<p>Paired comparisons with the reference, per FLOPs target (the same test and Holm family as the table "
            "above):</p><ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in sentences) + "</ul>") if sentences else ""
    return (f"<h2>Accuracy at matched prefill FLOPs</h2><p>Cells with a FLOPs target: each prompt's "
            "<code>retain</code> was solved so that the method's declared schedule costs the target share of the unpruned LLM prefill of "
            "the same input (the papers' formula 4nd² + 2n²d + 2ndm per decoder layer, text tokens included); "
            "<i>achieved</i> is the ratio the prefills recorded, layer by layer, averaged over the items, and it is "
            "what the plot puts on x. Retained tokens differ between methods at one FLOPs target: an in-LLM cut pays "
            "for the layers before it, a pre-LLM method does not. A method that cannot reach a target fails with the "
            f"reason; a prompt just beyond its reach (within {100 * FLOPS_SLACK:g}% of the unpruned prefill, "
            "<code>budget.FLOPS_SLACK</code>) runs at its nearest setting and is counted short of the target. "
            f"Δ and p as in the table above.</p><table><tr><th>method</th><th>settings</th><th>model</th>"
            "<th>benchmark</th><th>FLOPs target</th><th>FLOPs achieved</th><th>retain solved (mean)</th>"
            "<th>retained</th><th>score [95% CI]</th><th>Δ vs reference [95% CI]</th><th>p (Holm)</th>"
            f"<th>paired verdict</th><th>items</th><th>run</th><th>note</th></tr>{''.join(lines)}</table>"
            f"{said}{fig}")


def _method_cell(method) -> str:
    """A row's method name; an oracle (``ORACLES``) is labelled as one, so it is not read as a contender."""
    if method in ORACLES:
        return f'{_fmt(method)} <small title="{html.escape(ORACLES[method])}">(oracle: ceiling)</small>'
    return _fmt(method)


def _relative_cell(r: dict) -> str:
    if r.get("relative") is None and r.get("relative_note"):
        return f'<span title="{html.escape(r["relative_note"])}">n/c</span>'
    return _fmt(r.get("relative"), pct=True)


def record(out_dir: str, dest: str, *, title: str = "sweep", description: str = "", note: str = "",
           cells: Optional[list] = None, reference: Optional[dict] = None) -> str:
    """Copy a finished sweep's small, reproducible part to ``dest`` (a curated, committed report): each cell's
    ``params.json`` / ``run_config.json`` / ``results.json`` / ``failed.json`` / ``samples.jsonl`` (the per-item
    log, so paired comparisons and prompt diffs can be redone from the record; not the notebooks or per-cell pages), the index rebuilt there with its plots, and ``RECORD.md`` saying when, where, from which commit
    and with which model weights. Returns the
    index path."""
    import datetime
    import platform
    import shutil
    from .results import git_hash, versions
    src_runs = os.path.join(out_dir, "runs")
    cells = [d for d in _cell_folders(out_dir) if cells is None or d in set(cells)]
    if not cells:
        raise ValueError(f"{out_dir} holds no cells to record (run the sweep first)")
    if os.path.isdir(dest):
        shutil.rmtree(dest)
    weights = {}                                   # model -> the weights fingerprints its cells ran with
    for rid in cells:
        os.makedirs(os.path.join(dest, "runs", rid))
        for name in ("params.json", "run_config.json", "results.json", "failed.json", "samples.jsonl"):
            src = os.path.join(src_runs, rid, name)
            if os.path.isfile(src):
                shutil.copyfile(src, os.path.join(dest, "runs", rid, name))
                if name == "run_config.json":
                    with open(src) as f:
                        rc = json.load(f)
                    weights.setdefault(rc.get("model"), set()).add(rc.get("weights"))
    index = build_index(dest, title=title, description=description, cells=cells, reference=reference)
    models_line = "; ".join(f"{m}: {', '.join(sorted(map(str, w)))}" for m, w in sorted(weights.items(), key=str))
    with open(os.path.join(dest, "RECORD.md"), "w") as f:
        f.write(f"# {title}: recorded run\n\n- recorded: {datetime.date.today().isoformat()}\n"
                f"- commit: {git_hash() or 'unknown'}\n- model weights (run_config.json): {models_line or 'unknown'}\n"
                f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, "
                f"{platform.system()}\n- versions: {json.dumps(versions())}\n- cells: {len(cells)} (results.json "
                f"and samples.jsonl per cell; notebooks are not kept)\n" + (f"\n{note.strip()}\n" if note else ""))
    return index


# ------------------------------------------------------------------------------------------------ CLI
def add_parser(sub) -> None:
    p = sub.add_parser("report", help="run a sweep of notebook cells with papermill and build reports/<sweep>/index.html")
    p.add_argument("--sweep", required=True, help="sweep YAML file (see prunevid/report.py)")
    p.add_argument("--reports", default="reports", help="reports root folder (default: reports)")
    p.add_argument("--kernel", default=None, help="Jupyter kernel (default: prunevid-kit if installed, else python3)")
    p.add_argument("--force", action="store_true", help="rerun every cell from scratch (clears its folder)")
    p.add_argument("--index-only", action="store_true", help="only rebuild index.html from the existing runs")
    p.add_argument("--limit", type=int, default=None,
                   help="override the sweep's items per cell, as `python -m prunevid demo --limit` does (a limit is "
                        "part of each cell's id: give the same one to --index-only / --record)")
    p.add_argument("--record", metavar="DEST", default=None,
                   help="copy the finished sweep's results and per-item samples.jsonl (no notebooks) to DEST with "
                        "its index and a "
                        "RECORD.md, for a curated, committed report (e.g. reports/demo-recorded/demo)")
    p.set_defaults(func=run)


def run(args) -> int:
    sweep = load_sweep(args.sweep)
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        sweep["base"] = dict(sweep.get("base") or {}, limit=args.limit)
    out_dir = os.path.join(args.reports, sweep["name"])
    cells = [cell_id(c) for c in expand_cells(sweep)]      # the index shows this sweep file's cells only
    if args.index_only:
        print(build_index(out_dir, title=sweep["name"], description=sweep.get("description", ""), cells=cells,
                          reference=sweep.get("reference")))
        return 0
    if args.record:
        print(record(out_dir, args.record, title=sweep["name"], description=sweep.get("description", ""),
                     cells=cells, reference=sweep.get("reference")))
        return 0
    status = run_sweep(sweep, args.reports, kernel=args.kernel, force=args.force)
    failed = [k for k, v in status.items() if v == "failed"]
    print(f"[report] {os.path.join(out_dir, 'index.html')}: {len(status) - len(failed)} ok, {len(failed)} failed")
    return 1 if failed else 0
