"""The method registry: each name maps to a ``Method`` subclass (``prunevid.methods.base``) in a module of this
package, imported on first use."""
from __future__ import annotations

import importlib

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
    "oracle": ("oracle", "OracleMethod"),
    "pdrop": ("pdrop", "PDropMethod"),
    "divprune": ("divprune", "DivPruneMethod"),
    "fastvid": ("fastvid", "FastVIDMethod"),
    "holitom": ("holitom", "HoliTomMethod"),
    "framefusion": ("framefusion", "FrameFusionMethod"),
}


def available() -> list:
    """Names accepted by ``prunevid.apply(model, method=...)``."""
    return list(_METHODS)


def method_class(method: str) -> type:
    try:
        module, cls = _METHODS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; available: {available()}") from None
    return getattr(importlib.import_module(f"{__package__}.{module}"), cls)


def config_class(method: str) -> type:
    return method_class(method).config_class


def build(method: str, config):
    """The ``Method`` (``methods.base``) instance for ``method`` with ``config`` (an instance of ``config_class(method)``)."""
    return method_class(method)(config)
