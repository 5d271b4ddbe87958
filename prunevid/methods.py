"""Method registry: each method name maps to its config dataclass (the baselines issue adds more)."""
from __future__ import annotations

import dataclasses

from .config import PruneVidConfig


@dataclasses.dataclass
class NoneConfig:
    """No pruning: the patch only records statistics, outputs equal the unpatched model's."""

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {}


_METHODS = {"prunevid": PruneVidConfig, "none": NoneConfig}


def available() -> list:
    """Names accepted by ``prunevid.apply(model, method=...)``."""
    return list(_METHODS)


def config_class(method: str):
    try:
        return _METHODS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; available: {available()}") from None
