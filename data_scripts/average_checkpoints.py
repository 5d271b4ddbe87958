#!/usr/bin/env python
"""Average the weights of demo-model training checkpoints (a "model soup" along one run's trajectory).

    python data_scripts/average_checkpoints.py --out runs/soup data_scripts/demo_checkpoint/checkpoint.pt \\
        runs/t11/checkpoint.pt
    python data_scripts/train_demo_model.py --out runs/soup --eval-only --eval-n 50 ...   # judge it on val
    python data_scripts/train_demo_model.py --out runs/soup --export ...                  # write runs/soup/model

Every floating-point tensor of the model and of the training-only heads becomes the weighted mean of the inputs'
(uniform unless ``--weights``); the result is a slim checkpoint (no optimizer state) at ``<out>/checkpoint.pt``
that ``train_demo_model.py`` reads like any other: it evaluates it, exports it with ``save_pretrained``, or
continues training from it (AdamW moments start afresh). Step, training time, RNG state, arguments and the
held-out curve are those of the latest input (the one with the most steps); ``averaged_from`` records every input
(path, step, training minutes, weight) and travels into the exported ``training.json`` and the model card.

Averaging is cheap (seconds) and needs checkpoints of one architecture; it is meant for points of one run, whose
weights stay in one basin (checkpoints of unrelated runs average to noise).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence

import torch



def _is_state_dict(value) -> bool:
    """The model's and every training-only head's weights are the checkpoint's dicts of tensors (whatever heads a
    run has); optimizer state, RNG state, arguments and history are not."""
    return isinstance(value, dict) and bool(value) and all(isinstance(t, torch.Tensor) for t in value.values())


def average_state_dicts(dicts: Sequence[Dict[str, torch.Tensor]], weights: Sequence[float]) -> Dict[str, torch.Tensor]:
    """Weighted mean of state dicts with the same keys and shapes. Floating tensors are averaged (in float64,
    cast back to their dtype); other tensors (integer buffers) must agree and are copied."""
    keys = list(dicts[0])
    for i, d in enumerate(dicts[1:], 1):
        if list(d) != keys:
            missing = set(keys) ^ set(d)
            raise ValueError(f"input {i} has different tensors than input 0: {sorted(missing)[:5]}")
    out = {}
    for k in keys:
        ts = [d[k] for d in dicts]
        if any(t.shape != ts[0].shape for t in ts):
            raise ValueError(f"tensor {k!r} differs in shape between inputs: {[tuple(t.shape) for t in ts]}")
        if ts[0].is_floating_point():
            acc = sum(w * t.double() for w, t in zip(weights, ts))
            out[k] = acc.to(ts[0].dtype)
        else:
            if any(not torch.equal(t, ts[0]) for t in ts):
                raise ValueError(f"non-float tensor {k!r} differs between inputs; cannot average it")
            out[k] = ts[0].clone()
    return out


def average_checkpoints(states: Sequence[dict], weights: Optional[Sequence[float]] = None,
                        paths: Optional[Sequence[str]] = None) -> dict:
    """A slim checkpoint whose weights are the weighted mean of ``states`` (see the module doc)."""
    if len(states) < 2:
        raise ValueError("averaging needs at least two checkpoints")
    weights = [1.0 / len(states)] * len(states) if weights is None else [float(w) for w in weights]
    if len(weights) != len(states) or any(w < 0 for w in weights) or abs(sum(weights) - 1) > 1e-6:
        raise ValueError(f"weights must be {len(states)} non-negative numbers summing to 1, got {weights}")
    size = {s.get("args", {}).get("size") for s in states}
    if len(size) > 1:
        raise ValueError(f"checkpoints of different model sizes cannot be averaged: {sorted(map(str, size))}")
    parts = sorted(k for k, v in states[0].items() if k != "optimizer" and _is_state_dict(v))
    for i, s in enumerate(states):
        has = sorted(k for k, v in s.items() if k != "optimizer" and _is_state_dict(v))
        if has != parts:
            raise ValueError(f"input {i} has heads {has}, input 0 has {parts}")
    latest = max(range(len(states)), key=lambda i: states[i]["step"])
    out = {k: v for k, v in states[latest].items() if k not in parts and k != "optimizer"}
    for k in parts:
        out[k] = average_state_dicts([s[k] for s in states], weights)
    paths = list(paths) if paths is not None else [None] * len(states)
    out["averaged_from"] = [{"path": p, "step": s["step"], "train_minutes": round(s["train_seconds"] / 60, 2),
                             "weight": w} for p, s, w in zip(paths, states, weights)]
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="checkpoint.pt files of train_demo_model.py (two or more)")
    ap.add_argument("--out", required=True, help="folder for the averaged checkpoint.pt")
    ap.add_argument("--weights", type=float, nargs="+", default=None, help="one per checkpoint, summing to 1")
    args = ap.parse_args(argv)
    for p in args.checkpoints:
        if not os.path.isfile(p):
            ap.error(f"no such checkpoint: {p}")
    dest = os.path.join(args.out, "checkpoint.pt")
    if os.path.abspath(dest) in {os.path.abspath(p) for p in args.checkpoints}:
        ap.error(f"{dest} is one of the inputs; choose another --out")
    states = [torch.load(p, weights_only=False, map_location="cpu") for p in args.checkpoints]
    try:
        avg = average_checkpoints(states, args.weights, args.checkpoints)
    except ValueError as e:
        ap.error(str(e))
    os.makedirs(args.out, exist_ok=True)
    tmp = dest + ".tmp"
    torch.save(avg, tmp)
    os.replace(tmp, dest)
    src = ", ".join(f"step {a['step']} x {a['weight']:.3f}" for a in avg["averaged_from"])
    print(f"wrote {dest}: average of {src}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
