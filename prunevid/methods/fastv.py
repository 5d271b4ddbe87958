"""``fastv``: FastV (Chen et al., ECCV'24) — drop visual tokens inside the LLM after layer K.

Layer convention (``interfaces.md``): ``K`` is the number of decoder layers that run on all tokens; the scores
are the attention of layer ``K - 1`` (its own q/k with RoPE, causal — the map that layer computes), so layers
``K..`` run on the kept tokens. Score (``score``): ``"last"`` = the last token's row averaged over heads (the
official code, FastV #14), ``"all"`` = the mean over all rows and heads (the paper; accumulated block by block).
``R`` is the dropped share: ``floor((1 - R) x N_visual)`` visual tokens with the highest score are kept
(global top-k). Kept tokens keep their position ids. The KV cache of layers ``0..K-1`` is cut to the kept
tokens too (the shared ``LayerPruner`` convention: every layer caches the same entries); this does not change
the prefill. ``retain`` (matched budget) overrides ``R`` with ``1 - retain``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from ..config import _check_int, _check_number
from ..layer_pruner import Stage2Plan
from ..prune import count_for_ratio
from .base import ConfigMixin, LayerSchedule, Method, SequenceLayout

SCORES = ("last", "all")


@dataclass
class FastVConfig(ConfigMixin):
    K: Optional[int] = None            # None: resolved from the model (``make_config``): 2, or n_layers // 2 beyond
    R: float = 0.5
    score: str = "last"
    retain: Optional[float] = None

    layer_fields: ClassVar[dict] = {"K": 2}

    def __post_init__(self):
        if self.K is not None:
            self.K = _check_int("K", self.K, 1)
        self.R = _check_number("R", self.R, 0.0, 1.0)
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {self.score!r}")
        if self.retain is not None:
            self.retain = _check_number("retain", self.retain, 0.0, 1.0, lo_open=True)

    @property
    def drop_ratio(self) -> float:
        return 1.0 - self.retain if self.retain is not None else self.R


def fastv_keep_count(n_visual: int, drop_ratio: float) -> int:
    """Visual tokens FastV keeps: floor((1 - R) n)."""
    return count_for_ratio(1.0 - drop_ratio, n_visual)


class FastVMethod(Method):
    name = "fastv"
    config_class = FastVConfig

    @property
    def enabled(self) -> bool:
        return self.config.drop_ratio > 0.0

    def validate(self, num_layers: int) -> None:
        if self.config.K > num_layers - 1:
            raise ValueError(f"FastV K={self.config.K} leaves no layer to prune: the language model has "
                             f"{num_layers} decoder layers (valid K: 1..{num_layers - 1})")

    def plan(self, layout: SequenceLayout) -> Stage2Plan:
        cfg = self.config
        return Stage2Plan(seq_len=layout.seq_len, visual_start=layout.visual_start, visual_len=layout.visual_len,
                          query_start=layout.query_start, static_sizes=[], dynamic_sizes=[], window_sizes=[],
                          alpha=1.0, layer=cfg.K - 1, scoring="rope_causal", reduce="mean",
                          query=cfg.score, select="topk",
                          n_keep=fastv_keep_count(layout.visual_len, cfg.drop_ratio))

    def schedule(self, n_layers: int, n_text: float, n_visual: float, *, entering: Optional[float] = None,
                 kept: Optional[float] = None) -> LayerSchedule:
        """The first K layers on every visual token, layers K.. on the kept ones; every layer's cache holds the
        kept ones. ``kept`` defaults to ``floor((1 - R) x n_visual)`` (fractional for a fractional count)."""
        k = self.config.K
        if not 0 <= k <= n_layers:
            raise ValueError(f"FastV K={k} must be in 0..{n_layers} (the layers at full length)")
        n = self.entering(n_visual, entering)
        if kept is None:
            drop = self.config.drop_ratio
            kept = fastv_keep_count(int(n), drop) if float(n).is_integer() else (1.0 - drop) * n
        if not self.enabled:
            kept = n
        return LayerSchedule([n] * k + [kept] * (n_layers - k), [kept] * n_layers)

    def entering(self, n_visual: float, given: Optional[float] = None) -> float:
        return n_visual if given is None else given            # FastV prunes inside the LLM only
