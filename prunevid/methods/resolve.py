"""How a method's config is built, once for every caller (``apply``, the runner, bench, FLOPs, notebooks).

``make_config(method, params, model)``:

1. every name in ``params`` must be a field of the method's config (an unknown name is an error, everywhere);
   string values (``--set alpha=0.3``) are typed by the field's annotation;
2. the fields that depend on the model (a config class's ``layer_fields``: PruneVid's ``selected_layer``,
   FastV's ``K``, DyCoke's ``L``) default to ``None`` so "given" can be told apart, and are resolved in one order:
   the caller's value > the benchmark's default for this model (PLLaVA on VCG: K 5) > the checkpoint's
   ``prunevid_defaults.json`` > the architecture's registry defaults > the method's own default;
3. the depth rule: a layer index that was not given and lies beyond the model's decoder depth
   (``value >= n_layers``) becomes ``n_layers // 2``. A layer field may hold several indices (PyramidDrop's cut
   layers 8/16/24): when one of S defaulted indices lies beyond the depth they become S layers spread evenly,
   ``floor(n_layers x s / (S + 1))`` for s = 1..S (``depth_rule``; the single index's ``n_layers // 2`` is its
   S = 1 case). A value the caller gave is never changed (an index beyond the depth is the method's
   ``validate`` error).

The model's defaults (2 and 3) are the ones ``models.load`` attached to the model (``prunevid.state``); ``apply``
attaches the architecture's registry defaults to a model that came without them.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Optional

from .. import state as kit_state
from .registry import config_class


def _field_kind(cls, field: dataclasses.Field) -> tuple:
    """(base type, optional) of a config field, from its annotation (``from __future__ import annotations``
    leaves them as strings)."""
    try:
        hint = typing.get_type_hints(cls)[field.name]
    except Exception:                                   # an annotation that does not resolve: leave values alone
        return None, False
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else None), True
    return hint, False


def coerce(cls, name: str, value: Any) -> Any:
    """A ``--set`` string typed by the field's annotation (``"0.3"`` -> 0.3 for a float, ``"false"`` -> False for
    a bool, ``"none"`` -> None where the field is optional). Values that are not strings pass unchanged: the
    config's own validation judges them."""
    if not isinstance(value, str):
        return value
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    base, optional = _field_kind(cls, field)
    low = value.strip().lower()
    if low in ("none", "null") and (optional or name in getattr(cls, "layer_fields", {})):
        return None
    try:
        if base is bool:
            if low in ("true", "false"):
                return low == "true"
            raise ValueError
        if base is int:
            return int(float(value)) if float(value).is_integer() else float(value)
        if base is float:
            return float(value)
    except ValueError:
        kind = {bool: "true or false", int: "an integer", float: "a number"}[base]
        raise ValueError(f"{name} must be {kind}, got {value!r}") from None
    return value


def layer_fields(cls) -> dict:
    """The config fields that depend on the model's depth, with the method's own default: ``{field: default}``."""
    return dict(getattr(cls, "layer_fields", {}))


def num_layers_of(model) -> Optional[int]:
    """Decoder layers of a model's language model, from its config; ``None`` where it says nothing."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n = getattr(text, "num_hidden_layers", None)
    return int(n) if n is not None else None


def depth_rule(value, n_layers: Optional[int]):
    """A defaulted layer index beyond the model's depth becomes ``n_layers // 2``; a defaulted tuple of S layer
    indices with one beyond the depth becomes ``floor(n_layers x s / (S + 1))``, s = 1..S (evenly spread; the
    single index's rule is its S = 1 case). 8/16/24 on 4 layers -> 1/2/3; on 24 layers -> 6/12/18."""
    if isinstance(value, (tuple, list)):
        value = tuple(int(v) for v in value)
        if n_layers is not None and any(v >= n_layers for v in value):
            return tuple(n_layers * s // (len(value) + 1) for s in range(1, len(value) + 1))
        return value
    value = int(value)
    if n_layers is not None and value >= n_layers:
        return n_layers // 2
    return value


def resolve(config, model=None, *, benchmark: Optional[str] = None, n_layers: Optional[int] = None):
    """``config`` with its ``None`` layer fields resolved (the order in the module docstring)."""
    fields = layer_fields(type(config))
    missing = [f for f in fields if getattr(config, f) is None]
    if not missing:
        return config
    defaults = kit_state.model_defaults(model) if model is not None else None
    defaults = kit_state.defaults_for_benchmark(defaults or {}, benchmark)
    if n_layers is None and model is not None:
        n_layers = num_layers_of(model)
    changes = {}
    for name in missing:
        value = defaults.get(name)
        changes[name] = depth_rule(fields[name] if value is None else value, n_layers)
    return config.replace(**changes)


def make_config(method: str, params: Optional[dict] = None, model=None, *, benchmark: Optional[str] = None,
                config=None, n_layers: Optional[int] = None):
    """The config ``method`` runs with on ``model``: ``params`` (names checked, strings typed) laid over
    ``config`` (or the method's defaults), then the model-dependent fields resolved (module docstring).

    ``model`` may be ``None`` (the method's own defaults; the depth rule only where ``n_layers`` is given, as for
    an analytic preset); ``benchmark`` names the benchmark whose per-model defaults apply
    (``models.benchmark_defaults``)."""
    cls = config_class(method)
    params = dict(params or {})
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"method {method!r} has no parameter(s) {unknown}; its parameters: "
                         f"{sorted(known) or 'none'}")
    params = {k: coerce(cls, k, v) for k, v in params.items()}
    if config is None:
        cfg = cls(**params)
    else:
        if not isinstance(config, cls):
            raise TypeError(f"method {method!r} takes a {cls.__name__}, got {type(config).__name__}")
        cfg = config.replace(**params) if params else config
    return resolve(cfg, model, benchmark=benchmark, n_layers=n_layers)
