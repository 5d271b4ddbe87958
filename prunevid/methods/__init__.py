"""Method registry: each name maps to a ``Method`` subclass (``prunevid.methods.base``) and its config dataclass.

Every method is one small module here: pure tensor functions for its token rule, a config dataclass with the
original defaults, and a ``Method`` subclass answering the model file's three questions (pre-LLM reduction,
in-LLM plan, KV-cache policy). Shared mechanics live in ``prunevid.llm`` / ``prunevid.prune`` and are never
copied here.
"""
from __future__ import annotations

import importlib

from .base import ConfigMixin, Method, Reduction, SequenceLayout, VideoContext

# name -> (module in this package, Method subclass)
_METHODS = {
    "prunevid": ("prunevid_method", "PruneVidMethod"),
    "none": ("none", "NoneMethod"),
    "random": ("random_keep", "RandomKeepMethod"),
    "fastv": ("fastv", "FastVMethod"),
    "visionzip": ("visionzip", "VisionZipMethod"),
    "dycoke": ("dycoke", "DyCokeMethod"),
    "vidcom2": ("vidcom2", "VidCom2Method"),
    "prumerge": ("prumerge", "PruMergeMethod"),
    "prumerge+": ("prumerge", "PruMergePlusMethod"),
    "lookm": ("lookm", "LookMMethod"),
}


def available() -> list:
    """Names accepted by ``prunevid.apply(model, method=...)``."""
    return list(_METHODS)


def method_class(method: str) -> type:
    try:
        module, cls = _METHODS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; available: {available()}") from None
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def config_class(method: str) -> type:
    return method_class(method).config_class


def build(method: str, config) -> Method:
    """The ``Method`` instance for ``method`` with ``config`` (an instance of ``config_class(method)``)."""
    return method_class(method)(config)


def __getattr__(name):  # backwards compatible: prunevid.methods.NoneConfig
    if name == "NoneConfig":
        from .none import NoneConfig
        return NoneConfig
    raise AttributeError(name)


__all__ = ["available", "config_class", "method_class", "build", "Method", "Reduction", "SequenceLayout",
           "VideoContext", "ConfigMixin"]
