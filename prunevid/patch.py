"""``apply`` / ``remove`` / ``stats``: patch one model instance (ToMe/tomesd style, no global monkey-patching).

``apply`` finds the model's entry in the registry (``prunevid.models``), swaps the class of this instance's
multimodal module for a generated subclass that runs stage 1 and arms stage 2, and hooks the decoder layers
(``prunevid.layer_pruner.LayerPruner``). Everything lives in one ``PatchState`` (``prunevid.state``). ``remove``
restores the classes and removes the hooks; ``apply`` on a patched model first removes the old patch.
"""
from __future__ import annotations

import torch

from . import state as _state
from .layer_pruner import LayerPruner
from .state import STATS_KEYS, PatchState, empty_stats, finish_stats, info, is_patched, stats  # the API, re-exported


def apply(model: torch.nn.Module, config=None, *, method: str = "prunevid", benchmark=None, **params):
    """Patch ``model`` in place for ``method`` and return it.

    ``config`` is the method's config dataclass (``PruneVidConfig`` for ``"prunevid"``); ``params`` set or
    override its fields (``apply(model, alpha=0.3)``). Fields left ``None`` that depend on the model (PruneVid's
    ``selected_layer``, FastV's ``K``, DyCoke's ``L``) are resolved from the model's defaults (``benchmark``: a
    benchmark's own, e.g. PLLaVA on VCG) and its depth: ``prunevid.methods.make_config``. ``method="none"``
    patches without pruning, so the same statistics are recorded for the unpruned model. Calling ``apply``
    again replaces the previous patch.
    """
    from . import methods, models
    if method not in methods.available():
        raise ValueError(f"unknown method {method!r}; available: {methods.available()}")
    spec = models.spec_for(model)
    if _state.model_defaults(model) is None:        # a model not loaded by models.load: its architecture's defaults
        _state.set_model_defaults(model, spec.defaults)
    cfg = methods.make_config(method, params, model, benchmark=benchmark, config=config)
    remove(model)
    layers = spec.module.language_layers(model)
    impl = methods.build(method, cfg)
    impl.validate(len(layers))
    state = PatchState(method, cfg, spec, LayerPruner(layers), impl)
    _state.attach(model, state)
    spec.module.patch(model, state)
    return model


def remove(model: torch.nn.Module) -> torch.nn.Module:
    """Undo ``apply``: original classes, no hooks. A no-op on an unpatched model."""
    state = _state.find(model)
    if state is None:
        return model
    state.spec.module.unpatch(model)
    if state.pruner is not None:
        state.pruner.remove()
    _state.detach(model)
    return model


__all__ = ["apply", "remove", "stats", "info", "is_patched", "STATS_KEYS", "PatchState", "empty_stats", "finish_stats"]
