"""Hyperparameters of PruneVid, with the paper's names and validation.

Defaults are the values of the paper's multiple-choice runs (`prunevid-method.md` §3.1); the official
argparse defaults (tau=1.0, ratios 1.0, alpha=0.1) do not reproduce the paper and are not used.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

SCORINGS = ("official", "rope_causal")
SCORE_REDUCTIONS = ("max", "mean")


def _check_number(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    too_low = value <= lo if lo_open else value < lo
    if too_low or value > hi:
        left = "(" if lo_open else "["
        raise ValueError(f"{name} must be in {left}{lo}, {hi}], got {value!r}")
    return float(value)


def _check_int(name: str, value: Any, lo: int, hi: Optional[int] = None) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {rng}, got {value!r}")
    return value


POSITIONS = ("renumber", "original")


def check_positions(value: Any) -> str:
    """The ``positions`` option of the methods that shorten the sequence before the LLM."""
    if value not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {value!r}")
    return value


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


@dataclass
class PruneVidConfig:
    """PruneVid hyperparameters.

    Stage 1 (before the LLM): ``tau`` (a location is static when its mean pairwise cosine similarity inside a
    segment is strictly greater), ``temporal_segment_ratio`` (initial temporal clusters = int(T * ratio)),
    ``cluster_ratio`` (share of tokens kept by spatial DPC-KNN merging), ``k`` (DPC-KNN neighbours),
    ``min_merge_size`` (groups of at most this many tokens are not merged spatially; 14 in the official code).

    Stage 2 (inside the LLM, prefill only): ``selected_layer`` K is 0-indexed and inclusive: decoder layers
    0..K run on all stage-1 tokens, layers K+1.. on the kept ones, and the KV cache of layers 0..K is cut to
    the kept ones. ``None`` (the default) means the model's default, resolved by ``prunevid.methods.make_config``
    (10, the paper's, on the 7B models; the demo model's checkpoint says 2; beyond a model's depth:
    ``n_layers // 2``). ``alpha`` is the keep fraction, applied per group with floor.

    Named options (defaults reproduce the official code):
      - ``scoring``: ``"official"`` = pre-RoPE, unmasked softmax of layer K's own q/k;
        ``"rope_causal"`` = RoPE applied and causal normalisation (what an attention map of the layer shows).
      - ``score_reduce``: ``"max"`` (official: max over heads, then max over post-video tokens) or ``"mean"``.
      - ``retain``: matched budget (``None``: off, alpha is used as given). A target retained ratio
        (visual tokens after stage 2 / visual tokens in); alpha is then searched per video
        (``prunevid.methods.prunevid_method.alpha_for_budget``) and the achieved ratio is reported.
      - ``positions``: ``"renumber"`` (official: the tokens entering the LLM take positions 0..N1-1 of the
        shortened sequence) or ``"original"`` (each takes the RoPE position of its earliest input token, so a
        token still says which frame and place it came from, and decoding continues from the unreduced length;
        multimodal-RoPE models such as Qwen2-VL always use original positions). On the demo model the official
        rule costs PruneVid 14 points at 25% retained (``sweeps/demo-analysis.yaml``).
      - ``stage1_min_ratio``: with ``retain``, how the budget is split between the stages (``None``: official
        settings for stage 1, relaxed only when stage 1 alone would fall below the target; stage 2 cuts the rest).
        A share of the visual tokens that stage 1 must keep at least: its ``cluster_ratio`` and then ``tau`` are
        raised along the same steps until it does, and stage 2 (alpha) takes the budget the rest of the way.
        1.0 leaves stage 1 merging nothing. Meant for tight budgets, where the paper's stage-1 settings average
        small objects into the background (on the demo model, ``sweeps/demo-analysis.yaml``).
      - ``seed``: the DPC-KNN density tie-break noise is drawn from a generator seeded with this value at
        every prefill, so runs are reproducible; ``None`` draws from torch's global RNG as the official code.
    """

    tau: float = 0.8
    temporal_segment_ratio: float = 0.25
    cluster_ratio: float = 0.5
    selected_layer: Optional[int] = None
    alpha: float = 0.4
    k: int = 7
    stage1: bool = True
    stage2: bool = True
    min_merge_size: int = 14
    scoring: str = "official"
    score_reduce: str = "max"
    seed: Optional[int] = 0
    retain: Optional[float] = None
    positions: str = "renumber"
    stage1_min_ratio: Optional[float] = None

    # fields resolved from the model (``prunevid.methods.make_config``), with the method's own default
    layer_fields: ClassVar[dict] = {"selected_layer": 10}

    def __post_init__(self) -> None:
        self.tau = _check_number("tau", self.tau, -1.0, 1.0)
        self.temporal_segment_ratio = _check_number(
            "temporal_segment_ratio", self.temporal_segment_ratio, 0.0, 1.0, lo_open=True)
        self.cluster_ratio = _check_number("cluster_ratio", self.cluster_ratio, 0.0, 1.0, lo_open=True)
        self.alpha = _check_number("alpha", self.alpha, 0.0, 1.0, lo_open=True)
        if self.selected_layer is not None:
            self.selected_layer = _check_int("selected_layer", self.selected_layer, 0)
        self.k = _check_int("k", self.k, 1)
        self.min_merge_size = _check_int("min_merge_size", self.min_merge_size, 0)
        self.stage1 = _check_bool("stage1", self.stage1)
        self.stage2 = _check_bool("stage2", self.stage2)
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {self.scoring!r}")
        if self.score_reduce not in SCORE_REDUCTIONS:
            raise ValueError(f"score_reduce must be one of {SCORE_REDUCTIONS}, got {self.score_reduce!r}")
        if self.seed is not None:
            self.seed = _check_int("seed", self.seed, 0)
        if self.retain is not None:
            self.retain = _check_number("retain", self.retain, 0.0, 1.0, lo_open=True)
        self.positions = check_positions(self.positions)
        if self.stage1_min_ratio is not None:
            self.stage1_min_ratio = _check_number("stage1_min_ratio", self.stage1_min_ratio, 0.0, 1.0, lo_open=True)
            if self.retain is None:
                raise ValueError("stage1_min_ratio splits a matched budget between the stages: set retain too")
            if not (self.stage1 and self.stage2):
                raise ValueError("stage1_min_ratio needs both stages (stage1 and stage2 true): it moves the budget "
                                 "from stage 1 to stage 2")

    @property
    def enabled(self) -> bool:
        return self.stage1 or self.stage2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "PruneVidConfig":
        return dataclasses.replace(self, **changes)
