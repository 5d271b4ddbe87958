"""Benchmark registry: name -> definition (items, frames, prompts, parsing, scoring).

``get(name)`` returns a definition; ``available()`` lists the names. Data live under a data root
(``--data-root``, ``$PRUNEVID_DATA`` or ``./DATAS``) in the official PruneVid layout (prunevid-method.md §5.1).
"""
from __future__ import annotations

from .base import (PROTOCOLS, Benchmark, DataMissing, Item, Prompt, ProtocolOptions, Score, check_ans,
                   lmms_extract_letter, official_question_block)
from .egoschema import EgoSchema, EgoSchemaSubset
from .mvbench import MVBench
from .synthetic import Synthetic, SyntheticV2, SyntheticV2Val, SyntheticV3, SyntheticV3Val, SyntheticVal
from .vcgbench import VCGBench
from .videomme import VideoMME


_REGISTRY = {cls.name: cls for cls in (MVBench, VideoMME, EgoSchema, EgoSchemaSubset, VCGBench, Synthetic, SyntheticVal,
                                         SyntheticV2, SyntheticV2Val, SyntheticV3, SyntheticV3Val)}
ALIASES = {"video-mme": "videomme", "vcg": "vcgbench", "ego_schema": "egoschema", "egoschema_subset": "egoschema-subset"}


def available() -> list:
    return list(_REGISTRY)


def get(name: str) -> Benchmark:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in _REGISTRY:
        raise ValueError(f"unknown benchmark {name!r}; available: {available()}")
    return _REGISTRY[key]()


__all__ = ["PROTOCOLS", "Benchmark", "DataMissing", "Item", "Prompt", "ProtocolOptions", "Score", "available", "get", "check_ans",
           "lmms_extract_letter", "official_question_block"]
