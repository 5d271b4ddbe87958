"""``vidcom2``: VidCom2 (Liu et al., EMNLP'25) — attention-free per-frame selection before the LLM.

Reimplemented from the description in ``related-methods.md`` §2.13 (details the description leaves open are
the kit's reading, marked *):
  1. keep the ``channel_keep`` (50%) channels with the lowest variance over all the video's tokens, and
     L2-normalise the tokens on them*;
  2. similarity of a token x to a centre c: sum over alpha in ``alphas`` (1/8 .. 2) of
     exp(-||x - c||^2 / (2 alpha)); every token is compared with the video mean and with its frame's mean;
  3. frame budget (Frame Compression Adjustment): a frame's score is its tokens' mean similarity to the
     video mean*; w = softmax(-score / temperature) over frames (temperature 0.01), and the frame keeps
     ``floor(retain x (1 + w_f - mean(w)) x P)`` tokens (clamped to [1, P]*) — unique frames keep more;
  4. inside each frame keep the tokens with the lowest summed similarity to the two centres (the most
     distinctive ones), in raster order. No merging.
``retain`` is VidCom2's ``R_RATIO`` (0.25).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..config import _check_number, check_positions
from ..prune import bottom_k_sorted
from .base import ConfigMixin, Method, VideoContext, frames_reduction

ALPHAS = (1 / 8, 1 / 4, 1 / 2, 1.0, 2.0)


@dataclass
class VidCom2Config(ConfigMixin):
    retain: float = 0.25
    channel_keep: float = 0.5
    temperature: float = 0.01
    alphas: tuple = ALPHAS
    positions: str = "renumber"        # or "original": kept tokens keep their RoPE positions (PruneVidConfig)

    def __post_init__(self):
        self.retain = _check_number("retain", self.retain, 0.0, 1.0, lo_open=True)
        self.channel_keep = _check_number("channel_keep", self.channel_keep, 0.0, 1.0, lo_open=True)
        self.temperature = _check_number("temperature", self.temperature, 0.0, 1e9, lo_open=True)
        self.alphas = tuple(float(a) for a in self.alphas)
        if not self.alphas or min(self.alphas) <= 0:
            raise ValueError(f"alphas must be positive, got {self.alphas}")
        self.positions = check_positions(self.positions)


def multiscale_similarity(x: torch.Tensor, center: torch.Tensor, alphas: Sequence[float] = ALPHAS) -> torch.Tensor:
    """sum_alpha exp(-||x - c||^2 / (2 alpha)) over the last dimension (broadcasting ``center``)."""
    d2 = ((x - center) ** 2).sum(-1)
    return sum(torch.exp(-d2 / (2 * a)) for a in alphas)


def frame_budgets(frame_scores: torch.Tensor, retain: float, tokens_per_frame: int, temperature: float = 0.01):
    """(F,) similarity of each frame to the video -> (F,) long kept tokens per frame (see the module doc)."""
    w = torch.softmax(-frame_scores.float() / temperature, dim=0)
    scale = retain * (1.0 + w - w.mean())
    return (scale * tokens_per_frame + 1e-6).floor().long().clamp(1, tokens_per_frame)


def vidcom2_keep(frames: torch.Tensor, retain: float, channel_keep: float = 0.5, temperature: float = 0.01,
                 alphas: Sequence[float] = ALPHAS) -> torch.Tensor:
    """(F, P, C) -> (F, P) bool kept mask of VidCom2."""
    f, p, c = frames.shape
    x = frames.float()
    var = x.reshape(-1, c).var(dim=0)
    channels = var.topk(max(1, int(c * channel_keep)), largest=False).indices
    x = F.normalize(x[..., channels], dim=-1)
    video_mean = x.mean(dim=(0, 1))
    frame_mean = x.mean(dim=1, keepdim=True)                                # (F, 1, C')
    sim_video = multiscale_similarity(x, video_mean, alphas)                # (F, P)
    sim_frame = multiscale_similarity(x, frame_mean, alphas)
    budgets = frame_budgets(sim_video.mean(dim=1), retain, p, temperature)
    kept = torch.zeros(f, p, dtype=torch.bool, device=frames.device)
    total = sim_video + sim_frame
    for i in range(f):
        kept[i, bottom_k_sorted(total[i], int(budgets[i]))] = True
    return kept


class VidCom2Method(Method):
    name = "vidcom2"
    config_class = VidCom2Config

    @property
    def enabled(self) -> bool:
        return self.config.retain < 1.0

    def reduce(self, video: VideoContext):
        cfg = self.config
        kept = vidcom2_keep(video.frames, cfg.retain, cfg.channel_keep, cfg.temperature, cfg.alphas)
        return frames_reduction(video.frames, kept, {"tokens_per_frame": kept.sum(1).tolist()})
