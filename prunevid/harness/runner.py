"""``python -m prunevid eval``: one model x one method (config) x one benchmark per run, resumable.

The run folder (``--output-dir``) holds
  - ``run_config.json``: what defines the run (benchmark, model, method and hyperparameters, protocol, frames,
    dtype, seed, generation settings); a rerun with a different definition into the same folder is refused;
  - ``samples.jsonl``: one line per finished item, appended and flushed as it finishes (the resume log: a
    rerun skips the ids already there, so a crash or Ctrl-C loses at most the item in flight);
  - ``results.json``: written atomically when every item of the run is done (schema: ``interfaces.md``), or as
    an interim file marked ``"complete": false`` when SIGINT/SIGTERM stops the run;
  - ``run.lock``: the running process (a second run into the folder is refused; ``results.RunLock``);
  - ``submission.json`` for EgoSchema (``{q_uid: answer index}``, the official upload format).

What a run folder guarantees (one row per id, locking, interruption): ``docs/run-folders.md``.
A missing or corrupt video becomes an error row (counted, scored wrong) and the run goes on. Before each
item torch is seeded with ``--seed``, so a resumed run gives the same answers as an uninterrupted one.
Generation is greedy with EOS stopping; prefill and per-token decode times are measured per item.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional

from .. import benchmarks, methods
from .. import state as kit_state
from ..benchmarks.base import check_protocol
from ..models import demo_benchmark
from . import results
from .distributed import all_done_ids, barrier, dist_info, init_dist, logged_rows, merge_shards, share
from .item import eos_ids, run_item

# None = prunevid.models.default_model(): the shipped demo model, or the random tiny model while none is shipped.
DEFAULT_MODEL = None
DEFAULT_BENCHMARK = demo_benchmark()      # the shipped demo model's synthetic test split (synthetic-v3)
RUN_CONFIG = "run_config.json"
# Keys of run_config.json that must match for a rerun to resume (device, data_root and limit may change).
# "weights" is the model's weights fingerprint (prunevid.models.weights_fingerprint): the same name with other
# weights (a re-shipped demo model, a retrained checkpoint) is another run.
# "selected_layer" and "lora_alpha" (PLLaVA) are model settings a benchmark default may change (PLLaVA on VCG: 5 and
# 4); "protocol_options" the named departures from the official evaluation code (benchmarks.ProtocolOptions);
# "flops" the matched-compute target (--flops; absent from older folders, which read as None: no target).
IDENTITY_KEYS = ("benchmark", "model", "weights", "method", "protocol", "protocol_options", "frames", "dtype", "seed",
                 "gen_kwargs", "selected_layer", "lora_alpha", "flops")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate one model x one method on one benchmark (resumable; writes results.json)",
        description="Evaluate one model with one token-pruning method on one benchmark. Items are logged to "
                    "OUTPUT_DIR/samples.jsonl as they finish; rerunning the same command resumes; "
                    "OUTPUT_DIR/results.json is written at the end.")
    p.add_argument("--benchmark", default=DEFAULT_BENCHMARK,
                   help=f"one of {benchmarks.available()} (default: {DEFAULT_BENCHMARK})")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="registry name (demo: the shipped model; tiny: random weights), checkpoint directory or hub id "
                        "(default: demo when it is shipped, else tiny)")
    p.add_argument("--method", default="prunevid", help=f"one of {methods.available()} (default: prunevid)")
    p.add_argument("--data-root", default=None,
                   help="folder holding the benchmarks in the official DATAS layout (default: $PRUNEVID_DATA or ./DATAS)")
    p.add_argument("--output-dir", default=None,
                   help="run folder (default: runs/<benchmark>-<model>-<method>-<protocol>)")
    p.add_argument("--limit", type=int, default=None, help="only the first N items (quick runs; default: all)")
    p.add_argument("--frames", type=int, default=None,
                   help="frames per video (default: 16 for --protocol official, 32 for lmms-eval)")
    p.add_argument("--dtype", default=None,
                   help="float32 | bfloat16 | float16 (default: bfloat16 for real checkpoints under --protocol official, "
                        "as upstream; float32 for the demo and tiny models and otherwise)")
    p.add_argument("--lora-alpha", type=float, default=None,
                   help="PLLaVA's LoRA alpha (default: 4 on vcgbench, 14 elsewhere, as PruneVid's scripts/eval.sh)")
    p.add_argument("--protocol-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a named departure from the official evaluation code, repeatable: answer_parse=last_prefix, "
                        "stop_rule=eos, judge_parse=tolerant, consistency_labels=matched, short_clips=error; and the "
                        "video-blind control video=black "
                        "(default: upstream's behaviour for each; docs/fidelity.md)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="torch seed set before every item (default: 0)")
    p.add_argument("--protocol", default=None, choices=list(benchmarks.PROTOCOLS),
                   help="official: PruneVid/PLLaVA prompts, 16 frames at segment midpoints, up to 100 new tokens; "
                        "lmms-eval: lmms-eval prompts and parsing, 32 frames by linspace, 16 new tokens "
                        "(default: the model's registry default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="method hyperparameter, repeatable (--set alpha=0.3 --set tau=0.9)")
    p.add_argument("--flops", type=float, default=None, metavar="TARGET",
                   help="matched compute: the LLM prefill FLOPs ratio to reach, in (0, 1] of the unpruned prefill of "
                        "the same input (paper formula, text included); the method's retain is solved per prompt on "
                        "its declared schedule and the achieved ratio is reported (not with --set retain=; "
                        "docs/measurement.md)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from .cli_args import parse_set
    res = evaluate(benchmark=args.benchmark, model=args.model, method=args.method, data_root=args.data_root,
                   output_dir=args.output_dir, limit=args.limit, frames=args.frames, dtype=args.dtype,
                   device=args.device, seed=args.seed, protocol=args.protocol, params=parse_set(args.set),
                   progress=not args.no_progress, lora_alpha=args.lora_alpha,
                   protocol_options=parse_set(args.protocol_option, flag="--protocol-option"), flops=args.flops)
    if dist_info()[0] != 0:
        return 0            # rank 0 reports
    out = res["config"]["output_dir"]        # the unpruned score on the same items, when a `none` run lies beside
    ref = results.unpruned_reference(out, results.RunWriter(out).read_samples(),
                                     [k for k in IDENTITY_KEYS if k not in ("method", "selected_layer")])
    print(results.eval_summary(res, ref))
    return 0


# ---------------------------------------------------------------------------------------------------------
def default_data_root() -> str:
    return os.environ.get("PRUNEVID_DATA") or "DATAS"


def check_run_folder(output_dir: str, identity: dict) -> Optional[dict]:
    """The stored run config of ``output_dir`` (None for a fresh folder); a different run is refused."""
    path = os.path.join(output_dir, RUN_CONFIG)
    if not os.path.exists(path):
        if os.path.exists(os.path.join(output_dir, "samples.jsonl")):
            raise ValueError(f"{output_dir} holds samples.jsonl but no {RUN_CONFIG}: refusing to mix runs; "
                             f"use another --output-dir")
        return None
    with open(path) as f:
        stored = json.load(f)
    diff = [k for k in IDENTITY_KEYS if _canon(stored.get(k)) != _canon(identity.get(k))]
    if diff:
        detail = "; ".join(f"{k}: {stored.get(k)!r} there, {identity.get(k)!r} now" for k in diff)
        raise ValueError(f"{output_dir} holds a different run ({detail}); refusing to mix results: use another "
                         f"--output-dir or delete that folder")
    return stored


def _canon(x):
    return json.loads(json.dumps(x, sort_keys=True, default=str))


# ---------------------------------------------------------------------------------------------------------
TOKEN_KEYS = ("visual_tokens_in", "visual_tokens_stage1", "visual_tokens_stage2", "kv_visual_tokens", "text_tokens",
              "retained_ratio_stage1", "retained_ratio")


# ---------------------------------------------------------------------------------------------------------
def evaluate(*, benchmark: str = DEFAULT_BENCHMARK, model: Optional[str] = DEFAULT_MODEL, method: str = "prunevid",
             data_root: Optional[str] = None, output_dir: Optional[str] = None, limit: Optional[int] = None,
             frames: Optional[int] = None, dtype: Optional[str] = None, device: str = "cpu", seed: int = 0,
             protocol: Optional[str] = None, params: Optional[dict] = None, progress: bool = True,
             loaded=None, lora_alpha: Optional[float] = None, protocol_options: Optional[dict] = None,
             flops: Optional[float] = None) -> dict:
    """Run (or resume) one evaluation and return the results dict also written to ``results.json``.

    ``flops``: a matched-compute target (``--flops``): each prompt's ``retain`` is solved so the method's declared
    LLM prefill costs that share of the unpruned one (``prunevid.harness.budget.FlopsMatcher``); the rows and
    ``results.json``'s ``flops`` record the target, the solved knob and the achieved ratio. A target the method
    cannot reach stops the run with the reason (before any work where the method can never reach it); one just
    out of reach on a prompt (``budget.FLOPS_SLACK``) runs at the method's nearest setting, counted as short.

    ``loaded`` may be a ``prunevid.models.LoadedModel`` already in memory (tests, notebooks); ``model`` then
    only names it in the results. Settings not given are resolved before the model is loaded: the protocol
    (the model's default), the dtype (``models.default_dtype``), PLLaVA's ``lora_alpha`` and the stage-2 layer
    (the model's per-benchmark default, ``models.benchmark_defaults``).
    """
    params = dict(params or {})
    from .cli_args import check_device
    check_device(device)                                 # --device cuda without CUDA: one line, before any work
    if model is None:
        from ..models import default_model
        model = default_model()
    bench = benchmarks.get(benchmark)
    bench.options = benchmarks.ProtocolOptions.from_dict(protocol_options)   # unknown / bad option: before any work
    if flops is not None:                                # a FLOPs target: in range, not beside retain, and one the
        from .budget import FlopsUnreachable, check_flops_target, flops_static_reason    # method can reach at all
        flops = check_flops_target(flops)
        if "retain" in params:
            raise ValueError("--flops and retain are exclusive: a FLOPs target solves the method's retain per prompt")
        reason = flops_static_reason(method, flops, methods.config_class(method))
        if reason is not None:
            raise FlopsUnreachable(f"--flops {flops:g}: {reason}")
        if method != "none":     # the target supplies retain (stage1_min_ratio needs one to be valid); the target
            params = {**params, "retain": flops}   # stands in until each prompt's is solved: a pruning setting, so
            # the checks before the run (vision attention, hints) see the method switched on, as it will run
    methods.make_config(method, params)                  # unknown method / hyperparameter: before any work
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    data_root = data_root or default_data_root()
    items = bench.items(data_root, limit)                # missing data: one-line error naming the data script
    if protocol is not None:
        check_protocol(protocol)
    if frames is not None and frames < 1:
        raise ValueError(f"--frames must be >= 1, got {frames}")

    rank, world = dist_info()
    if world > 1:
        init_dist()
        if str(device).startswith("cuda") and ":" not in str(device):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"   # one GPU per rank

    from .. import models
    # the model's registry defaults decide what was not given (LLaVA-OneVision: lmms-eval; PLLaVA: official), read
    # before loading so the dtype is decided before the load
    peek = models.peek_defaults(model) if loaded is None else {**loaded.spec.defaults, "kit_model": True}
    protocol = check_protocol(protocol or peek.get("protocol") or "official")
    defaults = models.benchmark_defaults(peek, bench.name)
    if dtype is None:
        dtype = str(loaded.model.dtype).replace("torch.", "") if loaded is not None else \
            models.default_dtype(peek, protocol)
    if lora_alpha is not None and peek.get("arch") not in (None, "pllava"):     # before loading, where known
        raise ValueError("--lora-alpha applies to PLLaVA checkpoints only")
    if loaded is None:
        loaded = models.load(model, dtype=dtype, device=device, lora_alpha=lora_alpha)
        defaults = models.benchmark_defaults(loaded.spec.defaults, bench.name)
    # PLLaVA's LoRA alpha is a run-time scale: given > the model's per-benchmark default (VCG 4, else 14)
    is_pllava = hasattr(loaded.model, "set_lora_alpha")
    if lora_alpha is not None and not is_pllava:
        raise ValueError("--lora-alpha applies to PLLaVA checkpoints only")
    if is_pllava and lora_alpha is None:
        lora_alpha = defaults.get("lora_alpha", 14)
    restore_alpha = None
    if is_pllava:
        restore_alpha = loaded.model.config.lora_alpha          # a model passed in is given back as it came
        loaded.model.set_lora_alpha(lora_alpha)
    frames = frames or bench.default_frames(protocol)
    gen = bench.gen_kwargs(protocol)
    output_dir = output_dir or os.path.join("runs", f"{bench.name}-{os.path.basename(str(model).rstrip('/'))}-"
                                                       f"{method}-{protocol}")
    # the method's model-dependent settings (PruneVid's K...): given > this benchmark's default for the model >
    # the checkpoint's > the architecture's > the method's, then the depth rule (methods.make_config)
    kit_state.set_model_defaults(loaded.model, loaded.spec.defaults)
    cfg = methods.make_config(method, params, loaded.model, benchmark=bench.name)
    method_info = {"name": method, **cfg.to_dict()}
    if flops is not None and "retain" in method_info:
        method_info["retain"] = None         # no one value: solved per prompt (the rows' flops_retain), not the default

    identity = {"benchmark": bench.name, "model": str(model), "weights": getattr(loaded, "fingerprint", None),
                "method": method_info, "protocol": protocol, "protocol_options": bench.options.to_dict(),
                "frames": frames, "dtype": str(dtype), "seed": seed, "gen_kwargs": gen,
                "selected_layer": getattr(cfg, "selected_layer", None), "lora_alpha": lora_alpha, "flops": flops}
    import prunevid
    prunevid.apply(loaded.model, cfg, method=method)     # a config the model rejects fails before any file
    from .budget import FlopsMatcher
    compute = None if flops is None else FlopsMatcher(method, flops, cfg)
    lock = results.RunLock(output_dir)                   # taken by rank 0 in _run, before anything is written
    try:
        check_method_supported(loaded.model, method)     # e.g. VisionZip on Qwen2-VL: before the folder exists
        check_hints_available(bench, loaded.model, method)   # e.g. the oracle off the synthetic benchmark
        return _run(bench, items, loaded, identity, output_dir=output_dir, data_root=data_root, device=device,
                    limit=limit, progress=progress, rank=rank, world=world, lock=lock, compute=compute)
    finally:
        lock.release()
        prunevid.remove(loaded.model)
        if restore_alpha is not None:
            loaded.model.set_lora_alpha(restore_alpha)


def _run(bench, items, loaded, identity, *, output_dir, data_root, device, limit, progress, rank, world,
         lock=None, compute=None) -> dict:
    method, protocol, frames = identity["method"]["name"], identity["protocol"], identity["frames"]
    gen, seed = identity["gen_kwargs"], identity["seed"]
    run_id = problem = done = None
    if rank == 0:
        try:
            if lock is not None:     # a second run into this folder is refused here, naming the holder
                lock.acquire()
            stored = check_run_folder(output_dir, identity)
            run_id = stored["run_id"] if stored else results.new_run_id(bench.name)
            if stored is None:
                results.atomic_write_json(os.path.join(output_dir, RUN_CONFIG), {"run_id": run_id, **identity})
            done = sorted(all_done_ids(output_dir))
        except ValueError as e:
            problem = str(e)
    # Rank 0's view on every rank: a mixed folder is refused by all (none hangs), and every rank shards the
    # same list of items left (read once, before any rank logs a new item).
    run_id, problem, done = share((run_id, problem, done), world)
    if problem:
        raise ValueError(problem)
    writer = results.RunWriter(output_dir)
    done = set(done)
    todo = [it for it in items if it.id not in done]
    if world > 1:
        # shard what is left (so a rerun resumes whatever the number of ranks); each rank its own log
        todo = todo[rank::world]
        writer.samples_path = os.path.join(output_dir, f"samples.rank{rank}.jsonl")

    eos = eos_ids(loaded)
    from .cache import MediaCache
    media_cache = MediaCache.from_env()
    t_start = time.perf_counter()
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm
        if world > 1:   # rank 0's shard (the others advance at the same pace)
            bar = tqdm(total=len(todo), desc=f"{bench.name}/{method} rank 0 of {world}", unit="item",
                       file=sys.stderr, dynamic_ncols=True)
        else:
            bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=f"{bench.name}/{method}",
                       unit="item", file=sys.stderr, dynamic_ncols=True)
    try:
        with results.sigterm_as_interrupt():
            for item in todo:
                row = run_item(bench, item, loaded, protocol, frames, gen, eos, seed, cache=media_cache, method=method,
                               compute=compute)
                writer.append_sample(row)
                if bar is not None:
                    bar.update(1)
                    if row.get("error"):
                        bar.write(f"[eval] {item.id}: {row['error']}")
    except KeyboardInterrupt as e:   # Ctrl-C or SIGTERM: an interim results.json, then one line (results.Interrupted)
        if bar is not None:
            bar.close()
        raise _interrupted(e, bench, items, run_id=run_id, identity=identity, output_dir=output_dir,
                           data_root=data_root, device=device, limit=limit, rank=rank, t_start=t_start) from None
    finally:
        if bar is not None:
            bar.close()

    barrier(world)
    if rank != 0:            # rank 0 merges and scores; the others wait for its results
        barrier(world)
        with open(writer.results_path) as f:
            return json.load(f)
    writer.samples_path = os.path.join(output_dir, "samples.jsonl")
    merge_shards(output_dir)
    wanted = {it.id for it in items}
    rows = [r for r in writer.read_samples() if r["id"] in wanted]
    # the benchmark's own last step (VCG: the LLM judge's scores; EgoSchema: the server's submission file)
    rows, extra = bench.finalize(rows, items, output_dir)
    res = summarize(bench, rows, len(items), run_id=run_id, identity=identity, data_root=data_root, device=device,
                    limit=limit, output_dir=output_dir, session_s=time.perf_counter() - t_start)
    res["metrics"].update(extra or {})
    res.update(results.status_fields(rows, complete=True))
    writer.write_results(res)
    barrier(world)
    return res


# ---------------------------------------------------------------------------------------------------------
# Several processes (torchrun / accelerate launch): ranks from the environment, gloo for the barriers.
def _interrupted(exc, bench, items, *, run_id, identity, output_dir, data_root, device, limit, rank, t_start):
    """SIGINT / SIGTERM while items run: rank 0 writes an interim results.json (``"complete": false``) from what
    is logged (samples.jsonl and every shard, read without merging: other ranks may still be writing) and
    returns the ``results.Interrupted`` whose text is the one line to print."""
    sig = results.signal_name(exc)
    if rank != 0:
        return results.Interrupted("", sig)
    wanted = {it.id for it in items}
    rows = [r for i, r in logged_rows(output_dir).items() if i in wanted]
    res = summarize(bench, rows, len(items), run_id=run_id, identity=identity, data_root=data_root, device=device,
                    limit=limit, output_dir=output_dir, session_s=time.perf_counter() - t_start)
    res.update(results.status_fields(rows, complete=False))
    res["interrupted"] = {"signal": sig, "hint": results.RESUME_HINT}
    results.RunWriter(output_dir).write_results(res)
    return results.Interrupted(results.interrupted_message(len(rows), len(items)), sig)


def check_method_supported(model, method: str) -> None:
    """A method the patched model cannot run is a one-line error before the run folder is created, not a
    failure on the first item: one that needs the vision tower's attention (VisionZip, PruMerge) on a model
    whose adapter does not extract it (Qwen2-VL's windowed encoder)."""
    from ..models.video_patch import VideoModelAdapter
    impl = kit_state.active_method(model)
    if impl is None or not getattr(impl, "needs_vision_attention", False) or not getattr(impl, "enabled", True):
        return
    adapter = kit_state.get(model).adapter
    if adapter is not None and type(adapter).vision_attention is VideoModelAdapter.vision_attention:
        raise ValueError(f"method {method!r} needs the vision tower's attention, which the kit does not extract "
                         f"from {type(model).__name__}; use a method that does not (fastv, prunevid, vidcom2, "
                         f"dycoke, random, lookm) or another model")


def check_hints_available(bench, model, method: str) -> None:
    """A method that reads ground truth (``Method.needs_hints``: the oracle's object masks) on a benchmark that
    cannot give it (``Benchmark.provides_hints``) is a one-line error before the run folder is created."""
    from .item import needed_hints
    missing = [h for h in needed_hints(model) if h not in bench.provides_hints]
    if missing:
        raise ValueError(f"method {method!r} needs the hint {', '.join(missing)}, which the {bench.name} benchmark "
                         f"cannot give (the synthetic benchmarks can); outside the runner give it with "
                         f"prunevid.state.set_hints")


def tokens_summary(rows, method: str) -> dict:
    """``results.json``'s ``tokens``: the means of the per-item token counts and ratios, and ``budget_ratio``, the
    mean of what the method's budget is met on (``Method.budget_measure``: the retained ratio; for a method that
    cuts at several layers the visual tokens per layer averaged over the prefill; for a cache method its KV share)."""
    from ..methods import method_class
    from ..methods.base import budget_ratio
    ok = [r for r in rows if not r.get("error")]
    out = results.mean_stats(ok, TOKEN_KEYS)
    measure = method_class(method).budget_measure
    out["budget_ratio"] = _mean(budget_ratio(measure, r) for r in ok)
    return out


def _flops_summary(rows, target: Optional[float] = None):
    """``results.json``'s ``flops``: the mean analytic LLM prefill FLOPs of the items and their ratio to the unpruned
    prefill, ``ratio_vs_unpruned`` (the kit's exact formula) and ``ratio_paper_vs_unpruned`` (the papers' formula,
    text included). With a FLOPs ``target`` (``--flops``) also ``target``, ``formula``, ``achieved`` (=
    ``ratio_paper_vs_unpruned``), the solved ``retain`` (mean, min, max over the items' first prompts),
    ``predicted`` (the declared ratio at it, mean), and ``unreachable_items`` / ``unreachable_note``: items short of
    the target (just beyond the method's reach, run at its nearest setting; or the method's own rule stopping short
    of the solved retain: DyCoke's whole frames, PruneVid's smallest alpha)."""
    ok = [r for r in rows if not r.get("error")]
    ratio = _mean(r.get("flops_ratio") for r in ok)
    if ratio is None and target is None:
        return None
    out = {"backend": "analytic", "prefill": _mean(r.get("flops_prefill") for r in ok), "ratio_vs_unpruned": ratio,
           "ratio_paper_vs_unpruned": _mean(r.get("flops_ratio_paper") for r in ok)}
    if target is not None:
        retain = [r["flops_retain"] for r in ok if isinstance(r.get("flops_retain"), (int, float))]
        short = [r for r in ok if r.get("flops_reachable") is False]
        out.update(target=target, formula="paper", achieved=out["ratio_paper_vs_unpruned"],
                   retain={"mean": _mean(retain), "min": min(retain, default=None), "max": max(retain, default=None)},
                   predicted=_mean(r.get("flops_predicted") for r in ok), unreachable_items=len(short),
                   unreachable_note=short[0].get("flops_note") if short else None)
    return out


def _mean(vals):
    vals = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(vals) / len(vals) if vals else None


def summarize(bench, rows, total: int, *, run_id, identity, data_root, device, limit, output_dir,
              session_s: float) -> dict:
    """results.json from the rows of samples.jsonl (so a resumed run scores every item, old and new)."""
    metrics = bench.aggregate(rows)
    return results.base_results(
        run_id=run_id,
        config={"model": identity["model"], "weights": identity.get("weights"), "benchmark": identity["benchmark"],
                "protocol": identity["protocol"], "protocol_options": identity.get("protocol_options"),
                "selected_layer": identity.get("selected_layer"), "lora_alpha": identity.get("lora_alpha"),
                "data_root": os.path.abspath(data_root), "frames": identity["frames"], "dtype": identity["dtype"],
                "device": device, "seed": identity["seed"], "limit": limit, "gen_kwargs": identity["gen_kwargs"],
                "output_dir": output_dir},
        method=identity["method"],
        n_samples={"total": total, "done": len(rows), "errors": sum(1 for r in rows if r.get("error")),
                   "unparsed": sum(1 for r in rows if r.get("unparsed"))},
        counts={"short_clips": sum(1 for r in rows if r.get("short_clip")),
                "fallback_parsed": sum(1 for r in rows if r.get("fallback_parsed"))
                + sum(int((r.get("judge") or {}).get("fallback_parsed", 0)) for r in rows)},
        metrics=metrics,
        tokens=tokens_summary(rows, identity["method"]["name"]),
        flops=_flops_summary(rows, identity.get("flops")),
        timing={"prefill_ms": _mean(r.get("prefill_ms") for r in rows),
                "decode_ms_per_token": _mean(r.get("decode_ms_per_token") for r in rows),
                "total_s": sum(r.get("time_s") or 0.0 for r in rows),
                "this_session_s": session_s},
        seeds={"torch": identity["seed"], "method": identity["method"].get("seed")},
    )
