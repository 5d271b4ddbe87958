"""``visionzip``: VisionZip (Yang et al., CVPR'25), SigLIP variant, per frame, before the LLM.

Per frame with P tokens and ``n = floor(retain x P)`` kept (``dominant_share`` of them dominant):
  1. dominant tokens: the top ``round(n x dominant_share)`` by the attention each patch receives in the
     vision tower's last layer — the kit's adaptation for CLS-less SigLIP (HoliTom's port rule: the mean over
     heads and queries, pooled to the 2x-pooled grid; VisionZip itself uses CLS attention on CLIP);
  2. contextual tokens: of the remaining tokens (raster order) ``n - n_dominant`` evenly spaced targets
     (every ``max(1, R // n_ctx)``-th), every other remaining token joins its most similar target by cosine
     similarity of the vision keys (mean over heads, pooled) and each contextual token is the mean of its
     members.
Output per frame: the dominant tokens in raster order, then the contextual tokens in target order.
Defaults: ``retain=0.25`` (HoliTom's 25% setting, 49-50 of 196 per frame) with the 54/64 dominant share.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import _check_number
from ..prune import count_for_ratio, top_k_sorted
from .base import ConfigMixin, Method, Reduction, VideoContext


@dataclass
class VisionZipConfig(ConfigMixin):
    retain: float = 0.25
    dominant_share: float = 54 / 64

    def __post_init__(self):
        self.retain = _check_number("retain", self.retain, 0.0, 1.0, lo_open=True)
        self.dominant_share = _check_number("dominant_share", self.dominant_share, 0.0, 1.0)


def split_counts(n_keep: int, dominant_share: float) -> tuple:
    """(dominant, contextual) token counts for ``n_keep`` kept tokens of a frame."""
    n_dom = min(n_keep, int(round(n_keep * dominant_share)))
    return n_dom, n_keep - n_dom


def visionzip_frame(tokens: torch.Tensor, importance: torch.Tensor, keys: torch.Tensor, n_dominant: int,
                    n_contextual: int):
    """One frame: (P, C) tokens, (P,) importance, (P, Dk) keys -> (out (n_dom + n_ctx, C), labels (P,)).

    ``labels[j]`` is the output row token ``j`` went into (every token of a frame is represented).
    """
    p = tokens.shape[0]
    dominant = top_k_sorted(importance.float(), n_dominant)
    labels = torch.full((p,), -1, dtype=torch.long, device=tokens.device)
    labels[dominant] = torch.arange(dominant.numel(), device=tokens.device)
    rest = torch.ones(p, dtype=torch.bool, device=tokens.device)
    rest[dominant] = False
    remaining = rest.nonzero().squeeze(1)
    out = [tokens[dominant]]
    if n_contextual > 0 and remaining.numel() > 0:
        step = max(1, remaining.numel() // n_contextual)
        pick = torch.arange(0, remaining.numel(), step, device=tokens.device)[:n_contextual]
        targets = remaining[pick]
        others = remaining[~torch.isin(remaining, targets)]
        kn = F.normalize(keys.float(), dim=-1)
        assign = torch.arange(targets.numel(), device=tokens.device)
        members = targets
        if others.numel() > 0:
            nearest = (kn[others] @ kn[targets].T).argmax(dim=1)          # (n_others,)
            assign = torch.cat([assign, nearest])
            members = torch.cat([targets, others])
        sums = torch.zeros(targets.numel(), tokens.shape[1], dtype=torch.float32, device=tokens.device)
        sums.index_add_(0, assign, tokens[members].float())
        counts = torch.bincount(assign, minlength=targets.numel()).to(sums.dtype)
        out.append((sums / counts[:, None]).to(tokens.dtype))
        labels[members] = dominant.numel() + assign
    return torch.cat(out), labels


class VisionZipMethod(Method):
    name = "visionzip"
    config_class = VisionZipConfig
    needs_vision_attention = True

    @property
    def enabled(self) -> bool:
        return self.config.retain < 1.0

    def reduce(self, video: VideoContext) -> Reduction:
        frames = video.frames
        f, p = frames.shape[:2]
        n_dom, n_ctx = split_counts(max(1, count_for_ratio(self.config.retain, p)), self.config.dominant_share)
        outs, kept = [], torch.zeros(f, p, dtype=torch.bool, device=frames.device)
        for i in range(f):
            out, labels = visionzip_frame(frames[i], video.importance[i], video.keys[i], n_dom, n_ctx)
            outs.append(out)
            kept[i, top_k_sorted(video.importance[i].float(), n_dom)] = True
        return Reduction(tokens=torch.cat(outs), kept=kept,
                         info={"dominant_per_frame": n_dom, "contextual_per_frame": n_ctx})
