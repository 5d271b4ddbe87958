"""``random``: uniform random keep before the LLM — the floor every method must beat.

``floor(retain x F x P)`` visual tokens are drawn uniformly without replacement over the whole video (from a
generator seeded with ``seed`` at every prefill) and enter the LLM in their original order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..config import _check_int, _check_number, check_positions
from ..prune import count_for_ratio
from .base import ConfigMixin, Method, Reduction, VideoContext, frames_reduction


@dataclass
class RandomConfig(ConfigMixin):
    """``retain``: kept share of the visual tokens (1.0 = no-op); ``seed``: None = torch's global RNG;
    ``positions``: ``"renumber"`` (default, as the pre-LLM baselines do) or ``"original"`` (kept tokens keep
    their RoPE positions; see ``PruneVidConfig``)."""

    retain: float = 0.25
    seed: Optional[int] = 0
    positions: str = "renumber"

    def __post_init__(self):
        self.retain = _check_number("retain", self.retain, 0.0, 1.0, lo_open=True)
        if self.seed is not None:
            self.seed = _check_int("seed", self.seed, 0)
        self.positions = check_positions(self.positions)


def random_keep(num_tokens: int, n_keep: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Sorted indices of ``n_keep`` of ``num_tokens`` tokens drawn uniformly without replacement."""
    perm = torch.randperm(num_tokens, generator=generator)
    return perm[:n_keep].sort().values


class RandomKeepMethod(Method):
    name = "random"
    config_class = RandomConfig

    @property
    def enabled(self) -> bool:
        return self.config.retain < 1.0

    def reduce(self, video: VideoContext) -> Reduction:
        f, p = video.frames.shape[:2]
        idx = random_keep(f * p, max(1, count_for_ratio(self.config.retain, f * p)), video.generator)
        kept = torch.zeros(f * p, dtype=torch.bool)
        kept[idx] = True
        return frames_reduction(video.frames, kept.view(f, p).to(video.frames.device))
