"""``python -m prunevid eval``: one model x one method (config) x one benchmark per run, resumable.

The run folder (``--output-dir``) holds
  - ``run_config.json``: what defines the run (benchmark, model, method and hyperparameters, protocol, frames,
    dtype, seed, generation settings); a rerun with a different definition into the same folder is refused;
  - ``samples.jsonl``: one line per finished item, appended and flushed as it finishes (the resume log: a
    rerun skips the ids already there, so a crash or Ctrl-C loses at most the item in flight);
  - ``results.json``: written atomically when every item of the run is done (schema: ``interfaces.md``);
  - ``submission.json`` for EgoSchema (``{q_uid: answer index}``, the official upload format).

A missing or corrupt video becomes an error row (counted, scored wrong) and the run goes on. Before each
item torch is seeded with ``--seed``, so a resumed run gives the same answers as an uninterrupted one.
Generation is greedy with EOS stopping; prefill and per-token decode times are measured per item.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Optional

import torch

from . import benchmarks, methods, results
from .benchmarks.base import check_protocol
from .cache import uses_feature_cache

# None = prunevid.models.default_model(): the shipped demo model, or the random tiny model while none is shipped.
DEFAULT_MODEL = None
DEFAULT_BENCHMARK = "synthetic"
RUN_CONFIG = "run_config.json"
# Keys of run_config.json that must match for a rerun to resume (device, data_root and limit may change).
# "weights" is the model's weights fingerprint (prunevid.models.weights_fingerprint): the same name with other
# weights (a re-shipped demo model, a retrained checkpoint) is another run.
IDENTITY_KEYS = ("benchmark", "model", "weights", "method", "protocol", "frames", "dtype", "seed", "gen_kwargs")


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
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (default: float32)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="torch seed set before every item (default: 0)")
    p.add_argument("--protocol", default=None, choices=list(benchmarks.PROTOCOLS),
                   help="official: PruneVid/PLLaVA prompts, 16 frames at segment midpoints, up to 100 new tokens; "
                        "lmms-eval: lmms-eval prompts and parsing, 32 frames by linspace, 16 new tokens "
                        "(default: the model's registry default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="method hyperparameter, repeatable (--set alpha=0.3 --set tau=0.9)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from .cli import parse_set
    res = evaluate(benchmark=args.benchmark, model=args.model, method=args.method, data_root=args.data_root,
                   output_dir=args.output_dir, limit=args.limit, frames=args.frames, dtype=args.dtype,
                   device=args.device, seed=args.seed, protocol=args.protocol, params=parse_set(args.set),
                   progress=not args.no_progress)
    if dist_info()[0] != 0:
        return 0            # rank 0 reports
    m = res["metrics"]
    n = res["n_samples"]
    summary = (f"accuracy {m['accuracy']:.2f}%" if m.get("accuracy") is not None else
               f"scores {m.get('scores')}" if m.get("scores") else "no score (see results.json)")
    print(f"[eval] {res['config']['benchmark']} / {res['config']['model']} / {res['method']['name']}: {summary}; "
          f"{n['done']}/{n['total']} done, {n['errors']} errors, {n['unparsed']} unparsed -> "
          f"{res['config']['output_dir']}/results.json")
    return 0


# ---------------------------------------------------------------------------------------------------------
def default_data_root() -> str:
    return os.environ.get("PRUNEVID_DATA") or "DATAS"


def method_config(method: str, params: dict):
    """The method's config dataclass built from ``--set`` pairs; unknown names are a one-line error."""
    cls = methods.config_class(method)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"method {method!r} has no hyperparameter(s) {unknown}; known: {sorted(known) or 'none'}")
    return cls(**params)


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
def _sync(device) -> None:
    if torch.cuda.is_available() and str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _eos_ids(loaded) -> set:
    ids = set()
    for src in (getattr(loaded.model, "generation_config", None), loaded.tokenizer):
        eos = getattr(src, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    return ids


@torch.no_grad()
def greedy_generate(model, inputs: dict, max_new_tokens: int, eos_ids: set):
    """Greedy decoding with our own loop (prefill call, then one call per token on the returned cache), so
    prefill and decode are timed apart and the patched prefill path is the one that runs.

    Returns (new token ids, prefill stats of the patch, prefill ms, decode ms per token).
    """
    import prunevid
    device = inputs["input_ids"].device
    _sync(device)
    t0 = time.perf_counter()
    out = model(**inputs, use_cache=True, logits_to_keep=1)
    _sync(device)
    prefill_ms = 1000 * (time.perf_counter() - t0)
    stats = prunevid.stats(model) if prunevid.is_patched(model) else {}
    if stats:
        stats = dict(stats, **prefill_flops(model, stats))
    cache = getattr(out, "cache", None)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    tokens, steps = [], 0
    t1 = time.perf_counter()
    while True:
        tok = int(nxt[0, 0])
        if tok in eos_ids:
            break
        tokens.append(tok)
        if len(tokens) >= max_new_tokens:
            break
        out = model(input_ids=nxt, cache=cache, use_cache=True, logits_to_keep=1)
        cache = getattr(out, "cache", None)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        steps += 1
    _sync(device)
    decode_ms = 1000 * (time.perf_counter() - t1) / steps if steps else None
    return tokens, stats, prefill_ms, decode_ms


def prefill_flops(model, stats: dict) -> dict:
    """Analytic LLM prefill FLOPs of the last prefill (``prunevid.flops.analytic_from_run``, the kit's "exact"
    per-layer count, reported as FLOPs = 2 x MACs) and their ratio to the unpruned prefill of the same prompt:
    layers up to the in-LLM cut run on the stage-1 length, later layers on the stage-2 length."""
    from . import flops
    cfg = getattr(model, "config", None)
    if cfg is None or any(stats.get(k) is None for k in ("visual_tokens_in", "visual_tokens_stage1",
                                                          "visual_tokens_stage2", "text_tokens")):
        return {}
    try:
        shape = flops.LLMShape.from_config(cfg)
    except AttributeError:
        return {}
    plan = getattr(getattr(model, "_prunevid", None), "last_plan", None)
    cut = plan.layer if plan is not None and getattr(plan, "keep", None) is not None else None
    pruned = flops.analytic_from_run(shape, stats, selected_layer=cut)
    n_in = stats["visual_tokens_in"]
    full = flops.analytic_from_run(shape, dict(stats, visual_tokens_stage1=n_in, visual_tokens_stage2=n_in))
    return {"flops_prefill": 2 * pruned, "flops_ratio": pruned / full if full else None}


def _frames_error(e: BaseException) -> str:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f"{type(e).__name__}: {msg}"


def _takes_encoded_video(model, inputs: dict) -> bool:
    """Whether the model can be fed pre-encoded video features: transformers' ``mm_encoder_outputs`` in its
    forward, a ``get_video_features(..., return_dict=True)`` on its inner model (PLLaVA has neither) and pixels
    as the only visual input (Qwen2-VL's also need ``video_grid_thw``: encoded by the model itself)."""
    import inspect
    if set(inputs) - {"input_ids", "attention_mask", "pixel_values_videos"}:
        return False
    inner = getattr(model, "model", None)
    fn = getattr(inner, "get_video_features", None)
    if fn is None or "mm_encoder_outputs" not in inspect.signature(type(model).forward).parameters:
        return False
    params = inspect.signature(fn).parameters
    return "return_dict" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _encode(loaded, pixels: torch.Tensor) -> torch.Tensor:
    """The model's own video features (what the patch receives as ``mm_encoder_outputs``), (1, F*P+1, C)."""
    with torch.no_grad():
        out = loaded.model.model.get_video_features(pixels, return_dict=True)
    return out.pooler_output


def run_item(bench, item, loaded, protocol: str, frames: int, gen: dict, eos_ids: set, seed: int,
             cache=None, method: str = "prunevid") -> dict:
    """One item -> one samples.jsonl row. ``cache``: a ``prunevid.cache.MediaCache`` (or None)."""
    from . import video
    from .benchmarks.base import PROTOCOL_SAMPLING
    torch.manual_seed(seed)
    row = {"id": item.id, "category": item.category, "prediction": None, "parsed": None,
           "answer": item.answer_letter if bench.multiple_choice else item.answer, "correct": None, "error": None}
    for key in bench.secondary_categories:
        row[key] = item.extra.get(key)
    if bench.multiple_choice and row["answer"] is not None:
        row["correct"] = False
    t0 = time.perf_counter()
    key = None
    try:
        if cache is not None:
            key = cache.frames_key(item, frames, PROTOCOL_SAMPLING[protocol])
            clip = cache.frames(key, lambda: bench.frames(item, frames, protocol))
        else:
            clip = bench.frames(item, frames, protocol)
    except Exception as e:   # missing / corrupt / too short: recorded, the run goes on
        row["error"] = _frames_error(e)
        row["unparsed"] = False
        row["time_s"] = time.perf_counter() - t0
        return row
    preds, prefill, decode, n_new, stats = [], [], [], 0, {}
    for i, prompt in enumerate(bench.prompts(item, protocol)):
        inputs = video.build_inputs(loaded, clip, prompt.text, system=prompt.system, answer_prefix=prompt.answer_prefix)
        if cache is not None and uses_feature_cache(method) and _takes_encoded_video(loaded.model, inputs):
            from transformers.modeling_outputs import BaseModelOutputWithPooling
            from .cache import model_key
            pixels = inputs.pop("pixel_values_videos")
            feats = cache.features(key, model_key(loaded.name, loaded.model.dtype, loaded.preprocessing,
                                                  getattr(loaded, "fingerprint", None)),
                                   lambda: _encode(loaded, pixels))
            inputs["mm_encoder_outputs"] = {"video": BaseModelOutputWithPooling(
                pooler_output=feats.to(device=pixels.device, dtype=pixels.dtype))}
        toks, st, p_ms, d_ms = greedy_generate(loaded.model, inputs, gen["max_new_tokens"], eos_ids)
        preds.append(loaded.tokenizer.decode(toks, skip_special_tokens=True))
        prefill.append(p_ms)
        if d_ms is not None:
            decode.append(d_ms)
        n_new += len(toks)
        if i == 0:
            stats = st
    score = bench.score(item, preds, protocol)
    row.update(prediction=preds[0], parsed=score.parsed, correct=score.correct, unparsed=score.unparsed)
    if len(preds) > 1:
        row["prediction2"] = preds[1]
    row.update({k: stats.get(k) for k in _stats_keys() + ("flops_prefill", "flops_ratio")})
    row.update(prefill_ms=sum(prefill) / len(prefill), decode_ms_per_token=sum(decode) / len(decode) if decode else None,
               new_tokens=n_new, time_s=time.perf_counter() - t0)
    return row


def _stats_keys() -> tuple:
    from .patch import STATS_KEYS
    return tuple(STATS_KEYS)


TOKEN_KEYS = ("visual_tokens_in", "visual_tokens_stage1", "visual_tokens_stage2", "kv_visual_tokens", "text_tokens",
              "retained_ratio_stage1", "retained_ratio")


# ---------------------------------------------------------------------------------------------------------
def evaluate(*, benchmark: str = DEFAULT_BENCHMARK, model: Optional[str] = DEFAULT_MODEL, method: str = "prunevid",
             data_root: Optional[str] = None, output_dir: Optional[str] = None, limit: Optional[int] = None,
             frames: Optional[int] = None, dtype: str = "float32", device: str = "cpu", seed: int = 0,
             protocol: Optional[str] = None, params: Optional[dict] = None, progress: bool = True,
             loaded=None) -> dict:
    """Run (or resume) one evaluation and return the results dict also written to ``results.json``.

    ``loaded`` may be a ``prunevid.models.LoadedModel`` already in memory (tests, notebooks); ``model`` then
    only names it in the results.
    """
    params = dict(params or {})
    if model is None:
        from .models import default_model
        model = default_model()
    bench = benchmarks.get(benchmark)
    cfg = method_config(method, params)                  # unknown method / hyperparameter: before any work
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
        _init_dist()
        if str(device).startswith("cuda") and ":" not in str(device):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"   # one GPU per rank

    if loaded is None:
        from . import models
        loaded = models.load(model, dtype=dtype, device=device)
    # the model's registry defaults decide what was not given (LLaVA-OneVision: lmms-eval; PLLaVA: official)
    protocol = check_protocol(protocol or loaded.spec.defaults.get("protocol") or "official")
    frames = frames or bench.default_frames(protocol)
    gen = bench.gen_kwargs(protocol)
    output_dir = output_dir or os.path.join("runs", f"{bench.name}-{os.path.basename(str(model).rstrip('/'))}-"
                                                       f"{method}-{protocol}")
    if "selected_layer" in {f.name for f in dataclasses.fields(cfg)} and "selected_layer" not in params:
        n_layers = len(loaded.spec.module.language_layers(loaded.model))
        cfg = cfg.replace(selected_layer=min(loaded.spec.defaults.get("selected_layer", 10), n_layers // 2))
    method_info = {"name": method, **cfg.to_dict()}

    identity = {"benchmark": bench.name, "model": str(model), "weights": getattr(loaded, "fingerprint", None),
                "method": method_info, "protocol": protocol,
                "frames": frames, "dtype": str(dtype), "seed": seed, "gen_kwargs": gen}
    import prunevid
    prunevid.apply(loaded.model, cfg, method=method)     # a config the model rejects fails before any file
    try:
        return _run(bench, items, loaded, identity, output_dir=output_dir, data_root=data_root, device=device,
                    limit=limit, progress=progress, rank=rank, world=world)
    finally:
        prunevid.remove(loaded.model)


def _run(bench, items, loaded, identity, *, output_dir, data_root, device, limit, progress, rank, world) -> dict:
    method, protocol, frames = identity["method"]["name"], identity["protocol"], identity["frames"]
    gen, seed = identity["gen_kwargs"], identity["seed"]
    run_id = problem = done = None
    if rank == 0:
        try:
            stored = check_run_folder(output_dir, identity)
            run_id = stored["run_id"] if stored else results.new_run_id(bench.name)
            if stored is None:
                results.atomic_write_json(os.path.join(output_dir, RUN_CONFIG), {"run_id": run_id, **identity})
            done = sorted(all_done_ids(output_dir))
        except ValueError as e:
            problem = str(e)
    # Rank 0's view on every rank: a mixed folder is refused by all (none hangs), and every rank shards the
    # same list of items left (read once, before any rank logs a new item).
    run_id, problem, done = _share((run_id, problem, done), world)
    if problem:
        raise ValueError(problem)
    writer = results.RunWriter(output_dir)
    done = set(done)
    todo = [it for it in items if it.id not in done]
    if world > 1:
        # shard what is left (so a rerun resumes whatever the number of ranks); each rank its own log
        todo = todo[rank::world]
        writer.samples_path = os.path.join(output_dir, f"samples.rank{rank}.jsonl")

    eos = _eos_ids(loaded)
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
        for item in todo:
            row = run_item(bench, item, loaded, protocol, frames, gen, eos, seed, cache=media_cache, method=method)
            writer.append_sample(row)
            if bar is not None:
                bar.update(1)
                if row.get("error"):
                    bar.write(f"[eval] {item.id}: {row['error']}")
    finally:
        if bar is not None:
            bar.close()

    _barrier(world)
    if rank != 0:            # rank 0 merges and scores; the others wait for its results
        _barrier(world)
        with open(writer.results_path) as f:
            return json.load(f)
    writer.samples_path = os.path.join(output_dir, "samples.jsonl")
    merge_shards(output_dir)
    wanted = {it.id for it in items}
    rows = [r for r in writer.read_samples() if r["id"] in wanted]
    judge_info = None
    if not bench.multiple_choice:
        rows, judge_info = _judge(rows, items, output_dir)
    res = summarize(bench, rows, len(items), run_id=run_id, identity=identity, data_root=data_root, device=device,
                    limit=limit, output_dir=output_dir, session_s=time.perf_counter() - t_start)
    if judge_info is not None:
        res["metrics"]["judge"] = judge_info
    writer.write_results(res)
    if bench.name.startswith("egoschema"):
        from .benchmarks.egoschema import submission
        results.atomic_write_json(os.path.join(output_dir, "submission.json"), submission(rows))
    _barrier(world)
    return res


# ---------------------------------------------------------------------------------------------------------
# Several processes (torchrun / accelerate launch): ranks from the environment, gloo for the barriers.
def dist_info():
    """(rank, world size) from torchrun's / accelerate's environment; (0, 1) for a plain run."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _init_dist() -> None:
    import datetime
    import torch.distributed as dist
    if not dist.is_initialized():
        # only barriers travel between ranks, so gloo works for CPU and GPU runs alike; items can take long
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))


def _share(value, world: int):
    """Rank 0's ``value`` on every rank."""
    if world <= 1:
        return value
    import torch.distributed as dist
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist
        dist.barrier()


def _shard_paths(output_dir: str) -> list:
    import glob
    return sorted(glob.glob(os.path.join(output_dir, "samples.rank*.jsonl")))


def all_done_ids(output_dir: str) -> set:
    """Ids logged in samples.jsonl or in any rank's shard (left by an interrupted multi-process run)."""
    done = results.RunWriter(output_dir).done_ids()
    for path in _shard_paths(output_dir):
        w = results.RunWriter(output_dir)
        w.samples_path = path
        done |= w.done_ids()
    return done


def merge_shards(output_dir: str) -> int:
    """Append the rows of every rank shard to samples.jsonl (skipping ids already there), then remove the
    shards. Run by rank 0 after all ranks finished, and by any later run (a crashed multi-rank run's shards)."""
    main = results.RunWriter(output_dir)
    have = main.done_ids()
    n = 0
    for path in _shard_paths(output_dir):
        shard = results.RunWriter(output_dir)
        shard.samples_path = path
        for row in shard.read_samples():
            if row["id"] not in have:
                main.append_sample(row)
                have.add(row["id"])
                n += 1
        os.unlink(path)
    return n


def _judge(rows, items, output_dir):
    """VCG: score the rows with the LLM judge when ``PRUNEVID_JUDGE_BASE_URL`` is set (replies cached in
    ``OUTPUT_DIR/judge_cache.jsonl``); without it the predictions are kept and ``metrics.scores`` is None."""
    from .benchmarks.vcg_judge import Judge, judge_rows
    judge = Judge.from_env(cache_path=os.path.join(output_dir, "judge_cache.jsonl"))
    if judge is None:
        return rows, {"status": "not run: set PRUNEVID_JUDGE_BASE_URL (and PRUNEVID_JUDGE_MODEL, OPENAI_API_KEY) "
                                "and rerun the same command to score"}
    rows = judge_rows(judge, rows, {it.id: it for it in items})
    return rows, {"status": "done", "model": judge.model, "endpoint": judge.url, "calls": judge.calls,
                  "failures": judge.failures}


def _flops_summary(rows):
    ok = [r for r in rows if not r.get("error")]
    ratio = _mean(r.get("flops_ratio") for r in ok)
    if ratio is None:
        return None
    return {"backend": "analytic", "prefill": _mean(r.get("flops_prefill") for r in ok), "ratio_vs_unpruned": ratio}


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
                "protocol": identity["protocol"],
                "data_root": os.path.abspath(data_root), "frames": identity["frames"], "dtype": identity["dtype"],
                "device": device, "seed": identity["seed"], "limit": limit, "gen_kwargs": identity["gen_kwargs"],
                "output_dir": output_dir},
        method=identity["method"],
        n_samples={"total": total, "done": len(rows), "errors": sum(1 for r in rows if r.get("error")),
                   "unparsed": sum(1 for r in rows if r.get("unparsed"))},
        metrics=metrics,
        tokens=results.mean_stats([r for r in rows if not r.get("error")], TOKEN_KEYS),
        flops=_flops_summary(rows),
        timing={"prefill_ms": _mean(r.get("prefill_ms") for r in rows),
                "decode_ms_per_token": _mean(r.get("decode_ms_per_token") for r in rows),
                "total_s": sum(r.get("time_s") or 0.0 for r in rows),
                "this_session_s": session_s},
        seeds={"torch": identity["seed"], "method": identity["method"].get("seed")},
    )
