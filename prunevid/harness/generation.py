"""Generating and timing, once for the kit's three loops: the runner's greedy decoding (prefill and decode timed
apart), ``bench``'s prefill + decode steps, and the clip walkthrough's interleaved prefill timings. Owns the device
sync, the KV cache's keyword (``cache`` since transformers 5.24, ``past_key_values`` before) and its size."""
from __future__ import annotations

import inspect
import statistics
import time
from typing import Callable, Optional

import torch


def sync(device) -> None:
    """Wait for the device's queued work, so a wall-clock interval covers it (CUDA); nothing on the CPU."""
    if torch.cuda.is_available() and str(device).startswith("cuda"):
        torch.cuda.synchronize()


def cache_of(out):
    """The KV cache a forward returned, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def cache_kwarg(model) -> str:
    """The keyword this model's forward takes its KV cache under: its own parameter, else (a forward that passes
    ``**kwargs`` on, PLLaVA) the language model's."""
    for module in (model, getattr(getattr(model, "model", None), "language_model", None)):
        if module is None:
            continue
        params = inspect.signature(type(module).forward).parameters
        for name in ("cache", "past_key_values"):
            if name in params:
                return name
    return "cache"


def kv_bytes(cache) -> int:
    """Bytes of the keys and values a ``DynamicCache`` holds."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


class Stopwatch:
    """``with Stopwatch(device) as w: ...`` -> ``w.seconds``, the device synchronised at both ends."""

    def __init__(self, device):
        self.device = device
        self.seconds = None

    def __enter__(self):
        sync(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.seconds = time.perf_counter() - self._t0
        return False


@torch.no_grad()
def greedy_decode(model, inputs: dict, max_new_tokens: int, eos_ids: set, *, stop: Optional[Callable] = None,
                  after_prefill: Optional[Callable] = None):
    """Greedy decoding with our own loop (one prefill call, then one call per token on the returned cache), so the
    prefill and the decode steps are timed apart and the patched prefill path is the one that runs.

    ``after_prefill()`` runs between the two (untimed: the runner reads the patch's statistics there);
    ``stop(tokens)`` ends the generation after a token, as a transformers stopping criterion would (the token
    kept). Returns (new token ids, prefill ms, decode ms per step or ``None`` without a step)."""
    device = inputs["input_ids"].device
    with Stopwatch(device) as w:
        out = model(**inputs, use_cache=True, logits_to_keep=1)
    prefill_ms = 1000 * w.seconds
    if after_prefill is not None:
        after_prefill()
    key = cache_kwarg(model)
    cache = cache_of(out)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    tokens, steps = [], 0
    with Stopwatch(device) as w:
        while True:
            tok = int(nxt[0, 0])
            if tok in eos_ids:
                break
            tokens.append(tok)
            if len(tokens) >= max_new_tokens or (stop is not None and stop(tokens)):
                break
            out = model(input_ids=nxt, use_cache=True, logits_to_keep=1, **{key: cache})
            cache = cache_of(out)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            steps += 1
    return tokens, prefill_ms, (1000 * w.seconds / steps if steps else None)


@torch.no_grad()
def prefill_and_steps(model, inputs: dict, device, decode_steps: int = 1):
    """One prefill (``logits_to_keep=1``) and ``decode_steps`` greedy steps with explicit attention mask and
    positions in full-sequence terms, as ``generate`` passes them (the patch maps them onto a pruned cache;
    multimodal-RoPE models add the offset their prefill stored). Returns ``({"end_to_end": prefill s,
    "decode_step": median step s}, KV-cache bytes right after the prefill)``."""
    key = cache_kwarg(model)
    with Stopwatch(device) as w:
        out = model(**inputs, use_cache=True, logits_to_keep=1)
    prefill_s = w.seconds
    cache = cache_of(out)
    nbytes = kv_bytes(cache)
    nxt = out.logits[:, -1:].argmax(-1)
    mask = inputs["attention_mask"]
    n_full = inputs["input_ids"].shape[1]
    deltas = getattr(getattr(model, "model", None), "rope_deltas", None)
    offset = int(deltas.flatten()[0]) if isinstance(deltas, torch.Tensor) else 0
    steps = []
    for t in range(decode_steps):
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        pos = torch.tensor([[n_full + t + offset]], device=nxt.device)
        with Stopwatch(device) as w:
            step = model(input_ids=nxt, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                         **{key: cache})
        steps.append(w.seconds)
        nxt = step.logits[:, -1:].argmax(-1)
    return {"end_to_end": prefill_s, "decode_step": statistics.median(steps) if steps else None}, nbytes


@torch.no_grad()
def interleaved_prefill_ms(model, inputs: dict, repeats: int, variants: dict, device="cpu") -> dict:
    """Median prefill ms per variant (``{name: prunevid.apply parameters}``), ``repeats + 1`` rounds each running
    every variant once in turn, so drift hits every variant alike; round 0 is a warm-up. The model is left
    unpatched."""
    import prunevid
    times = {name: [] for name in variants}
    try:
        for _ in range(repeats + 1):
            for name, params in variants.items():
                prunevid.apply(model, **params)
                with Stopwatch(device) as w:
                    model(**inputs, logits_to_keep=1)
                times[name].append(w.seconds)
    finally:
        prunevid.remove(model)
    return {name: 1000 * statistics.median(v[1:]) for name, v in times.items()}
