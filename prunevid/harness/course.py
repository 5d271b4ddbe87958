"""The course as pages: ``python -m prunevid course`` -> ``reports/course/index.html``.

Executes the tutorial notebooks (``CHAPTERS``: 00-04, 11, 12, 13; not 10, the benchmark notebook, which is the
papermill target of ``report``) with papermill at their default parameters (tiny CPU settings; the demo model where a
chapter needs learned weights), exports each executed notebook to ``<out>/<stem>.html`` with its code, outputs and
pictures (``report.export_html(..., code=True)``: nothing hidden, a reader sees how every picture was made), and writes
``<out>/index.html``: the reading order, one sentence per chapter, a link to each page (``<out>/course.json`` keeps
each chapter's run date and time, so ``--only`` reruns some chapters and the index still dates the others). The
executed ``.ipynb`` files are not kept (the HTML holds everything a reader needs). ``reports/course/`` is committed, so the course can be read
without installing anything; regenerate it with this command after changing a notebook.

The kernels run with ``OMP_NUM_THREADS=1`` unless it is set (the tiny models are fastest on one thread, and many
times so on a busy machine), without Hugging Face progress bars (they would be a stray widget on every page), with
this checkout first on ``PYTHONPATH`` and, unless ``$PRUNEVID_DATA`` is set, ``./DATAS`` as the data root; each
notebook runs in a scratch folder, so relative outputs (``runs/``) never land in the checkout. A chapter that fails
is shown as failed in the index (with its partial page when there is one); the others still run.
"""
from __future__ import annotations

import contextlib
import datetime
import html
import json
import os
import shutil
import tempfile
import time
from typing import Optional, Sequence

from .report import _kernel, export_html

# (notebook file, title, one sentence: what the chapter teaches), in reading order
CHAPTERS = [
    ("00_frames_to_tokens.ipynb", "From frames to visual tokens",
     "How a video becomes the visual tokens a video LLM feeds its language model: decoding and sampling frames, the "
     "vision tower, projector and pooling, the <video> placeholders, and the check that a patched model changes "
     "nothing until it prunes."),
    ("01_temporal_segmentation.ipynb", "Stage 1a: temporal segmentation",
     "PruneVid cuts the video into contiguous segments of similar frames: DPC-KNN on frame summaries, its decision "
     "graph, and the repair that makes segments contiguous."),
    ("02_static_dynamic.ipynb", "Stage 1b: static and dynamic tokens",
     "Inside a segment, locations whose tokens hardly change (similarity above tau) are static and averaged over "
     "time; the rest stay per frame."),
    ("03_spatial_clustering.ipynb", "Stage 1c: spatial clustering",
     "Within each group, similar tokens are merged into cluster means, drawn on the frames, with the provenance that "
     "maps every merged token back to its locations."),
    ("04_attention_pruning.ipynb", "Stage 2: attention-guided pruning inside the LLM",
     "On the trained demo model: the stage-2 score map at layer K, what it keeps of the object a question names "
     "(as rates over test videos), what the other heads and layers do, and the compressed KV cache."),
    ("11_performance.ipynb", "Cost: FLOPs and measured speed",
     "The measured LLM-prefill and end-to-end speed-up of every method against the retained ratio (a recorded CPU "
     "run of the real 0.5B shape) beside the speed-up the FLOPs promise; the prefill FLOPs counted three ways and "
     "the paper's FLOPs column."),
    ("12_method_comparison.ipynb", "Method comparison at matched budgets",
     "Every method the kit implements at one retained ratio on the demo model: the achieved ratios, the divergence "
     "check, and what each keeps of the named object."),
    ("13_ablations.ipynb", "Ablations: one hyperparameter at a time",
     "Each PruneVid knob varied alone around the paper's setting: visual tokens on a real clip and accuracy on the "
     "synthetic benchmark."),
]


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@contextlib.contextmanager
def _kernel_environment():
    """The environment the chapters' kernels inherit (papermill starts them from this process), restored after."""
    root = _package_root()
    path = os.environ.get("PYTHONPATH", "")
    wanted = {"PYTHONPATH": root + (os.pathsep + path if path else ""),
              "HF_HUB_DISABLE_PROGRESS_BARS": "1",
              "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
              "PRUNEVID_DATA": os.environ.get("PRUNEVID_DATA") or os.path.abspath("DATAS")}
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _nav(pages: list, i: int) -> str:
    """A small bar on top of chapter page ``i``: back to the index, previous and next chapter."""
    links = ['<a href="index.html">course index</a>']
    if i > 0:
        links.append(f'<a href="{pages[i - 1][0]}">&larr; {html.escape(pages[i - 1][1])}</a>')
    if i + 1 < len(pages):
        links.append(f'<a href="{pages[i + 1][0]}">{html.escape(pages[i + 1][1])} &rarr;</a>')
    return ('<nav class="course-nav" style="font:14px sans-serif;padding:8px 16px;border-bottom:1px solid #ddd">'
            + " &middot; ".join(links) + "</nav>")


def _add_nav(page_path: str, nav: str) -> None:
    with open(page_path) as f:
        text = f.read()
    at = text.find("<body")
    if at < 0:
        return
    at = text.index(">", at) + 1
    with open(page_path, "w") as f:
        f.write(text[:at] + nav + text[at:])


def build_course(out_dir: str = os.path.join("reports", "course"), notebooks_dir: str = "notebooks", *,
                 chapters: Optional[Sequence[tuple]] = None, only: Optional[Sequence[str]] = None,
                 kernel: Optional[str] = None, log=print) -> dict:
    """Execute the chapters and write their pages and ``index.html`` into ``out_dir``.

    ``chapters``: (notebook file, title, sentence) tuples, default ``CHAPTERS``; the index lists all of them.
    ``only``: notebook-name prefixes (``["04", "12"]``) of the chapters to execute now; the others keep the page an
    earlier run left, and the index keeps their date and run time (``<out_dir>/course.json``). Returns {notebook
    file: "done" | "failed"} for the chapters executed.
    Pages in ``out_dir`` that belong to no chapter are removed, so the folder holds this course only.
    """
    import papermill as pm
    chapters = list(CHAPTERS if chapters is None else chapters)
    run_now = [c for c in chapters if only is None or any(c[0].startswith(str(n)) for n in only)]
    if not run_now:
        raise ValueError(f"no chapter matches {list(only or [])}; chapters: {', '.join(c[0] for c in chapters)}")
    for nb, _, _ in run_now:
        if not os.path.isfile(os.path.join(notebooks_dir, nb)):
            raise FileNotFoundError(f"notebook not found: {os.path.join(notebooks_dir, nb)}")
    os.makedirs(out_dir, exist_ok=True)
    kernel = kernel or _kernel()
    pages = [(os.path.splitext(nb)[0] + ".html", title) for nb, title, _ in chapters]
    for name in os.listdir(out_dir):           # a page of a chapter that was dropped or renamed must not linger
        if name.endswith(".html") and name != "index.html" and name not in {p for p, _ in pages}:
            os.unlink(os.path.join(out_dir, name))
    record_path = os.path.join(out_dir, "course.json")       # each chapter's last run: date, seconds
    record = {}
    if os.path.isfile(record_path):
        with open(record_path) as f:
            record = json.load(f)
    status, entries = {}, []
    scratch = tempfile.mkdtemp(prefix="prunevid-course-")
    try:
        with _kernel_environment():
            for i, (nb, title, sentence) in enumerate(chapters):
                page = os.path.join(out_dir, pages[i][0])
                entry = {"page": None, "title": title, "sentence": sentence, "notebook": nb, "seconds": None,
                         "date": None, "error": None}
                if (nb, title, sentence) not in run_now:
                    if os.path.isfile(page):
                        entry.update(page=pages[i][0], **{k: (record.get(nb) or {}).get(k) for k in ("seconds", "date")})
                    entries.append(entry)
                    continue
                executed = os.path.join(scratch, nb)
                work = os.path.join(scratch, f"cwd-{i}")
                os.makedirs(work)
                log(f"[course] {len(status) + 1}/{len(run_now)} {nb}")
                t0 = time.time()
                try:
                    pm.execute_notebook(os.path.join(notebooks_dir, nb), executed, kernel_name=kernel, cwd=work,
                                        progress_bar=False)
                    status[nb] = "done"
                except Exception as e:  # a failed chapter must not stop the course
                    lines = [m for m in str(e).strip().splitlines() if m.strip()]
                    entry["error"] = lines[-1] if lines else type(e).__name__
                    status[nb] = "failed"
                    log(f"[course] {nb}: FAILED: {entry['error']}")
                entry["seconds"] = round(time.time() - t0, 1)
                entry["date"] = datetime.date.today().isoformat()
                if os.path.isfile(executed):
                    export_html(executed, page, code=True)
                    _add_nav(page, _nav(pages, i))
                elif os.path.isfile(page):
                    os.unlink(page)               # never leave an older run's page behind a failure
                entry["page"] = pages[i][0] if os.path.isfile(page) else None
                entries.append(entry)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    with open(record_path, "w") as f:
        json.dump({e["notebook"]: {"seconds": e["seconds"], "date": e["date"]} for e in entries
                   if e["page"] and not e["error"] and e["seconds"] is not None}, f, indent=1, sort_keys=True)
    write_index(out_dir, entries, kernel=kernel)
    return status


def write_index(out_dir: str, entries: list, *, kernel: str = "") -> str:
    """``index.html``: the reading order, a sentence per chapter, links to the pages. Returns its path."""
    items = []
    for e in entries:
        head = (f'<a href="{html.escape(e["page"])}">{html.escape(e["title"])}</a>' if e["page"]
                else html.escape(e["title"]))
        note = (f'<span class="failed">failed: {html.escape(e["error"])}</span>' if e["error"]
                else f'<span class="meta">executed {e["date"]} in {e["seconds"]:.0f} s</span>' if e["seconds"] is not None
                else '<span class="meta">page from an earlier run</span>' if e["page"]
                else '<span class="failed">not generated yet</span>')
        items.append(f'<li><p class="title">{head} <code>notebooks/{html.escape(e["notebook"])}</code></p>'
                     f'<p>{html.escape(e["sentence"])}</p><p>{note}</p></li>')
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>PruneVid Kit: the course</title>
<style>
body {{ font: 15px/1.5 sans-serif; max-width: 860px; margin: 2em auto; padding: 0 1em; color: #222; }}
li {{ margin-bottom: 1.1em; }} li p {{ margin: 0.15em 0; }} .title {{ font-size: 1.1em; font-weight: bold; }}
.meta {{ color: #777; font-size: 0.9em; }} .failed {{ color: #b00; font-weight: bold; }}
code {{ font-size: 0.85em; color: #555; font-weight: normal; }}
</style></head>
<body>
<h1>PruneVid Kit: the course</h1>
<p>PruneVid prunes the visual tokens of a video LLM in two stages: before the language model it merges what repeats
in time and in space (chapters 01&ndash;03), inside it keeps the tokens the question attends to (chapter 04). The
chapters below are the kit's tutorial notebooks, each executed with its default parameters &mdash; small settings
that run on a laptop CPU: the random tiny LLaVA-OneVision where only shapes and vision features matter, the kit's
trained demo model where a picture depends on learned weights &mdash; and shown in full, code, pictures and printed
results. Read them in order; each page links to the next.</p>
<ol>
{chr(10).join(items)}
</ol>
<p class="meta">Generated by <code>python -m prunevid course</code> (kernel {html.escape(kernel)}); run the
notebooks yourself with <code>jupyter lab notebooks/</code> or change their parameters with papermill
(<code>notebooks/README.md</code>).</p>
</body></html>
"""
    path = os.path.join(out_dir, "index.html")
    with open(path, "w") as f:
        f.write(page)
    return path


def add_parser(sub) -> None:
    p = sub.add_parser("course", help="execute the tutorial notebooks and write reports/course/index.html")
    p.add_argument("--out", default=os.path.join("reports", "course"), help="output folder (default: reports/course)")
    p.add_argument("--notebooks", default="notebooks", help="folder of the notebooks (default: notebooks)")
    p.add_argument("--only", nargs="+", metavar="NN", default=None,
                   help="execute only these chapters, by number prefix (e.g. --only 04 12); the others keep their "
                        "pages from an earlier run")
    p.add_argument("--kernel", default=None, help="Jupyter kernel (default: prunevid-kit if installed, else python3)")
    p.set_defaults(func=run)


def run(args) -> int:
    status = build_course(args.out, args.notebooks, only=args.only, kernel=args.kernel)
    failed = [k for k, v in status.items() if v == "failed"]
    print(f"[course] {os.path.join(args.out, 'index.html')}: {len(status) - len(failed)} chapters ok, "
          f"{len(failed)} failed")
    return 1 if failed else 0
