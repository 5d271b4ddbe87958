"""What a sitting leaves behind: the resumable checkpoint, the exported model with its ``training.json``, and the
recipe recorded as a command line."""
from __future__ import annotations

import json
import os

import torch

from .cli import parse_args


def _plain_args(args) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("paren_id", "letter_ids", "device_type")}


# options that steer a sitting, and values parse_args derives from other options: not training options
# of their own (left out of the recorded command)
_SITTING_OPTIONS = ("out", "minutes", "export", "slim", "eval_only", "restart", "ground_task_weights",
                    "task_mix_weights", "prune_retain_range", "prune_informed_bias_range", "eval_pruned_specs")


def command_line(args, steps: int = None, stop_at: int = None) -> str:
    """The training options of ``args`` that differ from the defaults, as command-line flags (the last sitting's
    recipe, recorded in the exported model's ``training.json``); ``steps``: the planned schedule (``--export``
    overwrites ``args.steps``), ``stop_at``: where the sitting ended if before the schedule's end."""
    defaults = vars(parse_args([]))
    values = dict(_plain_args(args), **({"steps": steps} if steps is not None else {}))
    if stop_at is not None and stop_at < values["steps"]:
        values["stop_at"] = stop_at
    parts = []
    for k, v in values.items():
        if k in _SITTING_OPTIONS or defaults.get(k) == v:
            continue
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            parts.append(flag if v else "--no-" + k.replace("_", "-"))
        elif isinstance(v, list):
            parts += [f"{flag} {x}" for x in v]
        else:
            parts.append(f"{flag} {v}")
    return " ".join(parts)


def save_checkpoint(path, model, heads, opt, step, train_seconds, args, history, optional=(), averaged_from=None):
    """``optional``: the (head, key) pairs of the optional training-only heads (None where off);
    ``averaged_from``: the inputs of ``average_checkpoints.py`` when the weights descend from an average."""
    state = {"step": step, "model": model.state_dict(), "heads": heads.state_dict(),
             **{key: head.state_dict() for head, key in optional if head is not None},
             "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(), "train_seconds": train_seconds,
             "args": _plain_args(args), "history": history}
    if averaged_from:
        state["averaged_from"] = averaged_from
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def save_model(out_dir, model, tok, meta):
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "training.json"), "w") as f:
        json.dump(meta, f, indent=1)


LAYER_KEY = "model.language_model.layers."


def grow_state_dict(state: dict, n_src: int, n_dst: int) -> dict:
    """A model state dict of ``n_src`` LLM layers re-keyed for ``n_dst >= n_src`` layers: source layer ``i``
    becomes layer ``i * n_dst // n_src`` (spread evenly; ``n_dst = 2 n_src``: 0->0, 1->2, ...); every other key
    unchanged. The layers left without a source keep their fresh initialisation, which in a demo model (residual
    outputs zeroed, ``zero_init_residuals``) is the identity, so the grown model computes what the source did."""
    if n_dst < n_src:
        raise ValueError(f"cannot shrink {n_src} LLM layers to {n_dst}")
    out = {}
    for k, v in state.items():
        if k.startswith(LAYER_KEY):
            i, rest = k[len(LAYER_KEY):].split(".", 1)
            k = f"{LAYER_KEY}{int(i) * n_dst // n_src}.{rest}"
        out[k] = v
    return out


def source_layers(state: dict) -> int:
    """How many LLM layers a model state dict holds."""
    return 1 + max(int(k[len(LAYER_KEY):].split(".", 1)[0]) for k in state if k.startswith(LAYER_KEY))
