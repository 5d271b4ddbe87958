"""The state of one patched model: what ``apply`` attached, what the last prefill recorded, and the only code that
reads or writes it on a model object.

Everything a patch keeps lives in one ``PatchState`` stored on the model instance (and on the multimodal module
the model file patches). Code elsewhere in the kit, notebooks and tests reach it through the accessors here
(``stats``, ``info``, ``last_plan``, ``last_merge``, ``last_reduction``, ``active_method``, ``active_config``,
``set_hints`` / ``hints`` / ``clear_hints``), never through the attribute itself. The checkpoint's kit defaults
(``prunevid_defaults.json``), which ``models.load`` attaches to the model it returns, are kept here too so a bare
model object carries them to ``apply``.

This module sits below ``methods`` and ``models``: it imports neither.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

# The attribute names on the model (and the patched multimodal module); private to this module.
_STATE_ATTR = "_prunevid"
_DEFAULTS_ATTR = "_prunevid_defaults"

STATS_KEYS = (
    "visual_tokens_in", "visual_tokens_stage1", "visual_tokens_stage2", "kv_visual_tokens", "text_tokens",
    "segments", "static_tokens", "dynamic_tokens", "retained_ratio_stage1", "retained_ratio",
    "layer_tokens", "layer_kv_tokens",
)
# ``layer_tokens``: the visual tokens each decoder layer ran on in the prefill (one entry per layer, as the layer
# hooks saw them); ``layer_kv_tokens``: the visual entries each layer's KV cache holds when the prefill ends, after
# any cache policy (``None`` without a cache). FLOPs, ideal speed-ups and budgets are computed from them.


def empty_stats() -> dict:
    return {key: None for key in STATS_KEYS}


def finish_stats(stats: dict) -> dict:
    """Fill the two ratios (both over ``visual_tokens_in``) from the token counts."""
    n_in = stats.get("visual_tokens_in")
    for ratio, count in (("retained_ratio_stage1", "visual_tokens_stage1"), ("retained_ratio", "visual_tokens_stage2")):
        if n_in and stats.get(count) is not None:
            stats[ratio] = stats[count] / n_in
    return stats


class PatchState:
    """Shared by every patched piece of one model: the method, its config, the hooks, per-call bookkeeping."""

    def __init__(self, method: str, config: Any, spec, pruner, impl=None):
        self.method = method
        self.config = config
        self.impl = impl                       # the ``prunevid.methods.base.Method`` instance
        self.spec = spec                       # the model's registry entry (``prunevid.models.ModelSpec``)
        self.pruner = pruner                   # the ``LayerPruner`` on the decoder layers
        self.adapter = None                    # the model file's ``VideoModelAdapter``, set when it patches
        self.stats = empty_stats()
        self.decode: Optional[dict] = None     # set by a pruned prefill; used to remap decode-step inputs
        self.last_merge = None                 # stage-1 MergeResult of the last prefill (for visualisation)
        self.last_plan = None                  # in-LLM plan of the last prefill (scores, kept indices)
        self.last_reduction = None             # pre-LLM ``Reduction`` of the last prefill (any method)
        self.vision: Optional[dict] = None     # what a vision-tower probe recorded (attention, keys)
        self.info: dict = {}                   # method-specific extras of the last prefill (budget, decode counts)
        self.hints: dict = {}                  # ground truth a caller gives for the next calls (``set_hints``)

    def generator(self) -> Optional[torch.Generator]:
        seed = getattr(self.config, "seed", None)
        return None if seed is None else torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- attach / find
def attach(obj: torch.nn.Module, state: PatchState) -> None:
    """Store ``state`` on ``obj`` (the model, or the multimodal module a model file patches)."""
    obj.__dict__[_STATE_ATTR] = state


def detach(obj: torch.nn.Module) -> Optional[PatchState]:
    return obj.__dict__.pop(_STATE_ATTR, None)


def find(obj: torch.nn.Module) -> Optional[PatchState]:
    """The state on ``obj``, or ``None`` when it is not patched."""
    return obj.__dict__.get(_STATE_ATTR)


def get(model: torch.nn.Module) -> PatchState:
    """The state of a patched model; a clear error otherwise."""
    state = find(model)
    if state is None:
        raise ValueError("model is not patched: call prunevid.apply(model, ...) first")
    return state


# ---------------------------------------------------------------------------------------------- accessors
def is_patched(model: torch.nn.Module) -> bool:
    return find(model) is not None


def stats(model: torch.nn.Module) -> dict:
    """Token statistics of the last prefill (keys: ``STATS_KEYS``; ``None`` where not applicable)."""
    return dict(get(model).stats)


def info(model: torch.nn.Module) -> dict:
    """Method-specific extras of the last prefill/generation: ``method``, ``budget`` (target, achieved,
    reachable, note) where a budget was asked for, decode-time counts (DyCoke, Look-M)."""
    state = get(model)
    return {"method": state.method, **state.info}


def active_method(model: torch.nn.Module):
    """The ``Method`` instance the patch runs (``None`` on an unpatched model)."""
    state = find(model)
    return None if state is None else state.impl


def active_config(model: torch.nn.Module):
    """The resolved config the patch runs with (``None`` on an unpatched model)."""
    state = find(model)
    return None if state is None else state.config


def last_plan(model: torch.nn.Module):
    """The in-LLM plan of the last prefill (``prunevid.layer_pruner.Stage2Plan`` or ``CutPlan``), or ``None``."""
    state = find(model)
    return None if state is None else state.last_plan


def last_merge(model: torch.nn.Module):
    """PruneVid's stage-1 ``MergeResult`` of the last prefill, or ``None``."""
    state = find(model)
    return None if state is None else state.last_merge


def last_reduction(model: torch.nn.Module):
    """The pre-LLM ``Reduction`` of the last prefill (any method), or ``None``."""
    state = find(model)
    return None if state is None else state.last_reduction


def cache_policy(model: torch.nn.Module):
    """The KV-cache policy armed by the last prefill (Look-M, DyCoke), or ``None``."""
    state = find(model)
    pruner = None if state is None else state.pruner
    return None if pruner is None else pruner.policy


# ---------------------------------------------------------------------------------------------- hints
# Ground truth a caller gives a method for one call (the oracle's ``object_masks``): the runner sets them per item
# from the benchmark (``Benchmark.hints``) when the active method declares ``needs_hints``, and clears them after;
# the model file hands them to the method in ``VideoContext.hints``. ``remove`` drops them with the state.
def set_hints(model: torch.nn.Module, **hints: Any) -> None:
    """Give the patched model's method ground truth for its next prefills (replaces any hints set before), e.g.
    ``set_hints(model, object_masks=masks)`` for ``oracle``."""
    get(model).hints = dict(hints)


def hints(model: torch.nn.Module) -> dict:
    """The hints ``set_hints`` gave (``{}`` when none, or on an unpatched model)."""
    state = find(model)
    return {} if state is None else dict(state.hints)


def clear_hints(model: torch.nn.Module) -> None:
    """Drop the hints (a no-op on an unpatched model)."""
    state = find(model)
    if state is not None:
        state.hints = {}


# ---------------------------------------------------------------------------------------------- model defaults
def set_model_defaults(model: torch.nn.Module, defaults: dict) -> None:
    """Attach a checkpoint's kit defaults (registry defaults with ``prunevid_defaults.json`` laid over them)."""
    model.__dict__[_DEFAULTS_ATTR] = dict(defaults)


def model_defaults(model: torch.nn.Module) -> Optional[dict]:
    """What ``set_model_defaults`` attached, or ``None`` (a model not loaded by ``models.load``)."""
    d = model.__dict__.get(_DEFAULTS_ATTR)
    return None if d is None else dict(d)


def defaults_for_benchmark(defaults: dict, benchmark: Optional[str]) -> dict:
    """A model's defaults for one benchmark: its ``benchmarks[benchmark]`` entry laid over the rest (PLLaVA on
    VCG: ``selected_layer`` 5 and ``lora_alpha`` 4, as PruneVid's ``scripts/eval.sh``)."""
    per = (defaults.get("benchmarks") or {}).get(benchmark) or {} if benchmark else {}
    return {**{k: v for k, v in defaults.items() if k != "benchmarks"}, **per}
