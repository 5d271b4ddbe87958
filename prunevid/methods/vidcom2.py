"""``vidcom2``: VidCom2 (Liu et al., EMNLP'25) — attention-free per-frame selection before the LLM.

Transcribed from the authors' code, xuyang-liu16/VidCom2 (read at commit 944a17d),
``token_compressor/vidcom2/vidcom2.py`` (``vidcom2_compression`` and the functions it calls), applied as its
LLaVA-OneVision integration (``token_compressor/vidcom2/models/llava.py``) does: on the pooled frame features
(F frames x P tokens), before the video's newline token. No line of it is copied here.

1. ``select_low_var_channels``: keep the ``int(C x channel_keep)`` (50 %) channels with the lowest variance
   (population variance over all the video's tokens);
2. ``compute_gaussian_scores``: L2-normalise every token on those channels; its similarity to a centre c is
   ``sum over alpha in alphas (2^-3 .. 2) of exp(-||x - c||^2 / (2 alpha))``, against the video mean
   (``sim_video``) and against its frame's mean (``sim_frame``);
3. ``compute_scales`` (frame budgets): s_f = -mean of frame f's ``sim_video``; w = softmax((s - max s) /
   temperature) (0.01); scale_f = min(1, retain x (1 + w_f - mean w)); ``select_outlier_indices``: frame f keeps
   ``round(scale_f x P)`` tokens (``torch.round``: half to even), at least 1 — unique frames keep more;
4. inside each frame keep the tokens with the lowest ``sim_video + sim_frame`` (``topk(largest=False)``), in
   raster order; frames in order. No merging.
Everything runs in the features' own dtype, as upstream. ``retain`` is VidCom2's ``R_RATIO`` (0.25).

Kit adaptations: ``retain = 1`` switches VidCom2 off (upstream's R_RATIO = 1 would still trim the frames whose
weight is below the mean); at least one channel is kept when ``C x channel_keep < 1`` (upstream would keep
none). ``channel_keep``, ``temperature`` and ``alphas`` are constants upstream, fields here (defaults equal).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..config import _check_number, check_positions
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
    """(F,) mean similarity of each frame's tokens to the video mean -> (F,) long kept tokens per frame:
    upstream's ``compute_scales`` on the negated scores, then ``round(scale x P)``, at least 1 (see the module
    doc). Changed: ``round`` where the kit had ``floor``."""
    scores = -frame_scores
    w = torch.softmax((scores - scores.max()) / temperature, dim=0)
    scale = (retain * (1 + w - w.mean())).clamp(max=1.0)
    return (scale * tokens_per_frame).round().long().clamp(min=1)


def vidcom2_keep(frames: torch.Tensor, retain: float, channel_keep: float = 0.5, temperature: float = 0.01,
                 alphas: Sequence[float] = ALPHAS) -> torch.Tensor:
    """(F, P, C) -> (F, P) bool kept mask of VidCom2 (its tokens enter in frame-major, raster order)."""
    f, p, c = frames.shape
    flat = frames.reshape(-1, c)
    var = flat.var(dim=0, unbiased=False)
    channels = torch.topk(var, k=max(1, int(c * channel_keep)), largest=False).indices
    x = F.normalize(flat[:, channels].view(f, p, -1), dim=-1)
    video_mean = x.mean(dim=(0, 1), keepdim=True)                           # (1, 1, C')
    frame_mean = x.mean(dim=1, keepdim=True)                                # (F, 1, C')
    sim_video = multiscale_similarity(x, video_mean, alphas)                # (F, P)
    sim_frame = multiscale_similarity(x, frame_mean, alphas)
    budgets = frame_budgets(sim_video.mean(dim=-1), retain, p, temperature)
    total = sim_video + sim_frame
    kept = torch.zeros(f, p, dtype=torch.bool, device=frames.device)
    for i, k in enumerate(budgets.tolist()):
        kept[i, torch.topk(total[i], k=k, largest=False, sorted=False).indices] = True
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
