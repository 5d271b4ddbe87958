"""``apply`` / ``remove`` / ``stats``: patch one model instance (ToMe/tomesd style, no global monkey-patching).

``apply`` finds the model's entry in the registry (``prunevid.models``), swaps the class of this instance's
multimodal module for a generated subclass that runs stage 1 and arms stage 2, and hooks the decoder layers
(``prunevid.llm.LayerPruner``). Everything lives in one ``PatchState`` at ``model._prunevid``. ``remove``
restores the classes and removes the hooks; ``apply`` on a patched model first removes the old patch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch

from .config import PruneVidConfig
from .llm import LayerPruner

STATS_KEYS = (
    "visual_tokens_in", "visual_tokens_stage1", "visual_tokens_stage2", "kv_visual_tokens", "text_tokens",
    "segments", "static_tokens", "dynamic_tokens", "retained_ratio_stage1", "retained_ratio",
)


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

    def __init__(self, method: str, config: Any, spec, pruner: Optional[LayerPruner], impl=None):
        self.method = method
        self.config = config
        self.impl = impl                       # the ``prunevid.methods.base.Method`` instance
        self.spec = spec
        self.pruner = pruner
        self.stats = empty_stats()
        self.decode: Optional[dict] = None     # set by a pruned prefill; used to remap decode-step inputs
        self.last_merge = None                 # stage-1 MergeResult of the last prefill (for visualisation)
        self.last_plan = None                  # stage-2 plan of the last prefill (scores, kept indices)
        self.last_reduction = None             # pre-LLM ``Reduction`` of the last prefill (any method)
        self.info: dict = {}                   # method-specific extras of the last prefill (budget, decode counts)

    def generator(self) -> Optional[torch.Generator]:
        seed = getattr(self.config, "seed", None)
        return None if seed is None else torch.Generator().manual_seed(seed)


def _build_config(method: str, config, params: dict):
    from . import methods
    cls = methods.config_class(method)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"method {method!r} has no parameter(s) {unknown}; its parameters: {sorted(known)}")
    if config is None:
        return cls(**params)
    if not isinstance(config, cls):
        raise TypeError(f"method {method!r} takes a {cls.__name__}, got {type(config).__name__}")
    return config.replace(**params) if params else config


def apply(model: torch.nn.Module, config=None, *, method: str = "prunevid", **params):
    """Patch ``model`` in place for ``method`` and return it.

    ``config`` is the method's config dataclass (``PruneVidConfig`` for ``"prunevid"``); ``params`` set or
    override its fields (``apply(model, alpha=0.3)``). ``method="none"`` patches without pruning, so the same
    statistics are recorded for the unpruned model. Calling ``apply`` again replaces the previous patch.
    """
    from . import methods, models
    if method not in methods.available():
        raise ValueError(f"unknown method {method!r}; available: {methods.available()}")
    cfg = _build_config(method, config, params)
    spec = models.spec_for(model)
    remove(model)
    layers = spec.module.language_layers(model)
    impl = methods.build(method, cfg)
    impl.validate(len(layers))
    state = PatchState(method, cfg, spec, LayerPruner(layers), impl)
    model._prunevid = state
    spec.module.patch(model, state)
    return model


def remove(model: torch.nn.Module) -> torch.nn.Module:
    """Undo ``apply``: original classes, no hooks. A no-op on an unpatched model."""
    state = getattr(model, "_prunevid", None)
    if state is None:
        return model
    state.spec.module.unpatch(model)
    if state.pruner is not None:
        state.pruner.remove()
    del model._prunevid
    return model


def is_patched(model: torch.nn.Module) -> bool:
    return getattr(model, "_prunevid", None) is not None


def info(model: torch.nn.Module) -> dict:
    """Method-specific extras of the last prefill/generation: ``method``, ``budget`` (target, achieved,
    reachable, note) where a budget was asked for, decode-time counts (DyCoke, Look-M)."""
    state = getattr(model, "_prunevid", None)
    if state is None:
        raise ValueError("model is not patched: call prunevid.apply(model, ...) first")
    return {"method": state.method, **state.info}


def stats(model: torch.nn.Module) -> dict:
    """Token statistics of the last prefill (keys: ``STATS_KEYS``; ``None`` where not applicable)."""
    state = getattr(model, "_prunevid", None)
    if state is None:
        raise ValueError("model is not patched: call prunevid.apply(model, ...) first")
    return dict(state.stats)
