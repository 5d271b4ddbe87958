"""``prumerge`` / ``prumerge+``: LLaVA-PruMerge (Shang et al., ICCV'25), per frame, before the LLM.

Importance is the kit's adaptation for CLS-less SigLIP: the attention each patch receives in the vision
tower's last layer, averaged over heads and queries, pooled to the per-frame grid (PruMerge uses CLS->patch
attention on CLIP). Per frame:
  1. adaptive selection (``iqr_outliers``): the tokens whose importance is above Q3 + 1.5 IQR (quartiles
     with linear interpolation, as ``numpy.percentile``); at least one token is kept;
  2. PruMerge+ adds evenly spaced samples from the remaining tokens until ``floor(plus_ratio x P)`` are
     kept (plus_ratio 0.25, the published ~25% retention; nothing is added when the outliers already reach it);
  3. k-NN merge: every kept token absorbs its ``k_neighbors`` (32) nearest pruned tokens by cosine similarity
     of the vision keys, as an importance-weighted sum added to it: x_i + sum_j a_j x_j;
  4. ``summary_token``: one extra token per frame, the importance-weighted mean of all pruned tokens.
PruMerge's kept count is adaptive, so it cannot be driven to a budget (``retain`` is refused and
``prunevid.budget`` reports it unreachable); PruMerge+ takes ``retain`` as its ``plus_ratio``.
No-op: ``prumerge+`` with ``plus_ratio=1, k_neighbors=0, summary_token=False``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..config import _check_bool, _check_int, _check_number
from ..prune import count_for_ratio
from .base import ConfigMixin, Method, Reduction, VideoContext


@dataclass
class PruMergeConfig(ConfigMixin):
    k_neighbors: int = 32
    iqr_scale: float = 1.5
    summary_token: bool = True
    retain: Optional[float] = None

    def __post_init__(self):
        self.k_neighbors = _check_int("k_neighbors", self.k_neighbors, 0)
        self.iqr_scale = _check_number("iqr_scale", self.iqr_scale, 0.0, 1e9)
        self.summary_token = _check_bool("summary_token", self.summary_token)
        if self.retain is not None:
            raise ValueError("PruMerge cannot be driven to a budget: its kept count is adaptive (IQR outliers "
                             "of each frame). Use prumerge+ (retain sets plus_ratio) or report PruMerge as is.")


@dataclass
class PruMergePlusConfig(PruMergeConfig):
    plus_ratio: float = 0.25

    def __post_init__(self):
        retain, self.retain = self.retain, None
        super().__post_init__()
        self.plus_ratio = _check_number("plus_ratio", self.plus_ratio, 0.0, 1.0)
        if retain is not None:
            self.retain = _check_number("retain", retain, 0.0, 1.0, lo_open=True)

    @property
    def target_ratio(self) -> float:
        return self.retain if self.retain is not None else self.plus_ratio


def iqr_outliers(importance: torch.Tensor, scale: float = 1.5) -> torch.Tensor:
    """(P,) -> (P,) bool: importance > Q3 + scale x (Q3 - Q1); the top token when there is no outlier."""
    x = importance.float()
    q1, q3 = torch.quantile(x, torch.tensor([0.25, 0.75], device=x.device))
    out = x > q3 + scale * (q3 - q1)
    if not out.any():
        out[x.argmax()] = True
    return out


def spatial_samples(kept: torch.Tensor, n_total: int) -> torch.Tensor:
    """PruMerge+: add evenly spaced tokens (raster order) of the not-kept ones until ``n_total`` are kept."""
    kept = kept.clone()
    need = n_total - int(kept.sum())
    if need > 0:
        rest = (~kept).nonzero().squeeze(1)
        pick = torch.linspace(0, rest.numel() - 1, need, device=kept.device).round().long().unique()
        kept[rest[pick]] = True
    return kept


def knn_merge(tokens: torch.Tensor, importance: torch.Tensor, keys: torch.Tensor, kept: torch.Tensor,
              k_neighbors: int, summary_token: bool) -> torch.Tensor:
    """Kept tokens absorb their k nearest pruned tokens (keys' cosine) weighted by importance; optionally
    one summary token (importance-weighted mean of the pruned ones). Returns (n_kept [+1], C)."""
    centers = kept.nonzero().squeeze(1)
    pruned = (~kept).nonzero().squeeze(1)
    out = tokens[centers].float()
    w = importance.float()
    if k_neighbors > 0 and pruned.numel() > 0:
        kn = F.normalize(keys.float(), dim=-1)
        sim = kn[centers] @ kn[pruned].T                                     # (n_kept, n_pruned)
        nn = sim.topk(min(k_neighbors, pruned.numel()), dim=1).indices       # (n_kept, k)
        members = pruned[nn]
        out = out + (w[members][..., None] * tokens[members].float()).sum(dim=1)
    if summary_token and pruned.numel() > 0:
        wp = w[pruned]
        out = torch.cat([out, ((wp[:, None] * tokens[pruned].float()).sum(0) / wp.sum().clamp_min(1e-12))[None]])
    return out.to(tokens.dtype)


class PruMergeMethod(Method):
    name = "prumerge"
    config_class = PruMergeConfig
    needs_vision_attention = True

    @property
    def enabled(self) -> bool:
        return True

    def _kept(self, importance: torch.Tensor) -> torch.Tensor:
        return iqr_outliers(importance, self.config.iqr_scale)

    def reduce(self, video: VideoContext) -> Reduction:
        cfg = self.config
        outs, kept_all = [], []
        for i in range(video.num_frames):
            kept = self._kept(video.importance[i])
            outs.append(knn_merge(video.frames[i], video.importance[i], video.keys[i], kept, cfg.k_neighbors,
                                  cfg.summary_token))
            kept_all.append(kept)
        kept = torch.stack(kept_all)
        return Reduction(tokens=torch.cat(outs), kept=kept, info={"kept_per_frame": kept.sum(1).tolist()})


class PruMergePlusMethod(PruMergeMethod):
    name = "prumerge+"
    config_class = PruMergePlusConfig

    @property
    def enabled(self) -> bool:
        cfg = self.config
        return cfg.target_ratio < 1.0 or cfg.k_neighbors > 0 or cfg.summary_token

    @property
    def prunes(self) -> bool:
        return self.config.target_ratio < 1.0

    def _kept(self, importance: torch.Tensor) -> torch.Tensor:
        kept = super()._kept(importance)
        return spatial_samples(kept, count_for_ratio(self.config.target_ratio, importance.numel()))
