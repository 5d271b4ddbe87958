"""``prumerge`` / ``prumerge+``: LLaVA-PruMerge (Shang et al., ICCV'25), per frame, before the LLM.

Upstream: 42Shawn/LLaVA-PruMerge ``llava/model/multimodal_encoder/clip_encoder.py``: ``outlier_dectection``
(the IQR rule), ``CLIPVisionTower.token_prune_merge_advanced`` (PruMerge) and
``token_prune_merge_advanced_plus`` (PruMerge+, the branch ``if_adaptive=True`` that ``forward`` calls). Upstream
reduces one image; the kit applies the rule to every frame of a video.

Vision signals (``prunevid.models.video_patch.method_probe``, pooled to the per-frame grid like the features):
  * importance: on CLIP towers (LLaVA-NeXT-Video, PLLaVA) the CLS row of one softmax over the *full* q/k
    vectors (heads concatenated, scaled by D^-1/2) of the vision layer after the feature layer, as upstream
    (q/k hooks on CLIP-L layer 23, features from layer -2). SigLIP (LLaVA-OneVision) has no CLS token and its
    feature layer (-1) is the last layer: the kit's adaptation uses the attention each patch receives in the
    feature layer, mean over heads and queries.
  * keys: the full key vectors (``k_proj`` output, heads concatenated) of the same layer, as upstream.
Per frame with P tokens:
  1. ``outlier_ratio``: r = (number of importance values > Q3 + 1.5 IQR) / P, quartiles interpolated linearly
     as ``numpy.percentile``;
  2. ``adaptive_selection``: the top ``int(P x r)`` tokens by importance, in descending importance (upstream's
     ``topk`` order). ``int(P x r)`` is computed in floats as upstream, so it can be one less than the outlier
     count (P = 196: 1 outlier -> 0 kept, 27 -> 26; never on upstream's 576). No outlier -> nothing selected:
     the frame is its summary token alone;
  3. PruMerge+ (``spatial_samples``): then the tokens of ``arange(0, P - 1, int(int(1 / r) / 3))`` not already
     selected, in raster order (upstream's adaptive stride). With ``retain=`` (the kit's named option, for
     matched budgets): evenly spaced unselected tokens until ``floor(retain x P)`` are kept instead;
  4. ``knn_merge``: each kept token adds the importance-weighted *sum* of its ``k_neighbors`` (32) nearest tokens
     by key cosine among *all* other tokens of the frame (kept ones included, with their unmerged features);
  5. ``summary_token``: one extra token, the importance-weighted *sum* of the tokens not kept.
Output per frame: the kept tokens (merged) in selection order, then the summary token.
PruMerge's kept count is adaptive, so it cannot be driven to a budget (``retain`` is refused and
``prunevid.harness.budget`` reports it unreachable). No-op: ``prumerge+`` with ``retain=1, k_neighbors=0,
summary_token=False``.
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
                             "of each frame). Use prumerge+ with retain= (the kit's fixed-count option) or report "
                             "PruMerge as is.")


@dataclass
class PruMergePlusConfig(PruMergeConfig):
    """``retain`` None (default): upstream's adaptive stride; a share in (0, 1]: the kit's fixed count."""

    def __post_init__(self):
        retain, self.retain = self.retain, None
        super().__post_init__()
        if retain is not None:
            self.retain = _check_number("retain", retain, 0.0, 1.0, lo_open=True)


def iqr_outliers(importance: torch.Tensor, scale: float = 1.5) -> torch.Tensor:
    """(P,) -> (P,) bool: importance > Q3 + scale x (Q3 - Q1) (upstream's ``outlier_dectection``; quartiles as
    ``numpy.percentile``). Changed: no outlier now gives an all-False mask, as upstream (the kit used to force
    the top token)."""
    x = importance.float()
    q1, q3 = torch.quantile(x, torch.tensor([0.25, 0.75], device=x.device))
    return x > q3 + scale * (q3 - q1)


def outlier_ratio(importance: torch.Tensor, scale: float = 1.5) -> float:
    """(P,) -> the share of IQR outliers, a Python float as upstream's ``len(outliers) / len(attn)``."""
    return int(iqr_outliers(importance, scale).sum()) / importance.numel()


def adaptive_selection(importance: torch.Tensor, scale: float = 1.5):
    """(P,) -> (indices (n,) long in descending importance, ratio r): upstream's ``topk(cls_attn, int(N * r))``."""
    r = outlier_ratio(importance, scale)
    n = int(importance.numel() * r)
    return importance.float().topk(n).indices, r


def spatial_samples(selected: torch.Tensor, num_tokens: int, ratio: float,
                    n_total: Optional[int] = None) -> torch.Tensor:
    """PruMerge+'s spatial samples: (n,) selected indices -> (m,) added indices, ascending, none of them selected.

    Default (upstream's ``if_adaptive`` branch): ``arange(0, num_tokens - 1, int(int(1 / ratio) / 3))`` — the
    stride follows the outlier ratio and the last token is never sampled. ``ratio`` 0 (no outlier) makes upstream
    divide by zero; the kit takes the rule's limit (an infinite stride samples token 0 only). A stride of 0
    (ratio > 1/3, unreachable with ``iqr_scale >= 0``) is taken as 1. ``n_total`` (the kit's ``retain=`` option):
    evenly spaced unselected tokens until ``n_total`` are kept. Changed from (kept (P,) bool, n_total) -> bool.
    """
    device = selected.device
    if n_total is None:
        if ratio > 0:
            stride = max(1, int(int(1 / ratio) / 3))
            seq = torch.arange(0, num_tokens - 1, stride, device=device)
        else:
            seq = torch.zeros(1 if num_tokens > 1 else 0, dtype=torch.long, device=device)
        return seq[~torch.isin(seq, selected)]
    need = n_total - selected.numel()
    if need <= 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    rest = torch.ones(num_tokens, dtype=torch.bool, device=device)
    rest[selected] = False
    rest = rest.nonzero().squeeze(1)
    pick = torch.linspace(0, rest.numel() - 1, min(need, rest.numel()), device=device).round().long().unique()
    return rest[pick]


def knn_merge(tokens: torch.Tensor, importance: torch.Tensor, keys: torch.Tensor, kept: torch.Tensor,
              k_neighbors: int, summary_token: bool) -> torch.Tensor:
    """(P, C) tokens, (P,) importance, (P, Dk) keys, ``kept`` (n,) long indices (output order; a (P,) bool mask
    means raster order) -> (n [+1], C).

    Each kept token i becomes ``x_i + sum_j a_j x_j`` over its ``k_neighbors`` nearest tokens j by key cosine
    among all tokens but i (other kept tokens included, unmerged); the summary token is ``sum_j a_j x_j`` over
    the tokens not kept (zero when every token is kept). Changed: neighbours were only pruned tokens and the
    summary was a weighted mean; ``kept`` was a bool mask only. Upstream asks for exactly 32 neighbours and fails
    with fewer candidates; the kit takes ``min(k_neighbors, P - 1)``.
    """
    p = tokens.shape[0]
    centers = kept.nonzero().squeeze(1) if kept.dtype == torch.bool else kept.long()
    x = tokens.float()
    w = importance.float()
    out = x[centers]
    k = min(k_neighbors, p - 1)
    if k > 0 and centers.numel() > 0:
        kn = F.normalize(keys.float(), dim=-1)
        sim = kn[centers] @ kn.T                                             # (n, P)
        sim[torch.arange(centers.numel(), device=sim.device), centers] = float("-inf")   # not itself
        nn = sim.topk(k, dim=1).indices                                      # (n, k)
        out = out + (w[nn][..., None] * x[nn]).sum(dim=1)
    if summary_token:
        rest = torch.ones(p, dtype=torch.bool, device=tokens.device)
        rest[centers] = False
        out = torch.cat([out, (w[rest][:, None] * x[rest]).sum(0, keepdim=True)])
    return out.to(tokens.dtype)


class PruMergeMethod(Method):
    name = "prumerge"
    config_class = PruMergeConfig
    needs_vision_attention = True
    # the vision signals (prunevid.models.video_patch.method_probe): the layer after the feature layer (where
    # the tower has one), CLS attention over the full q/k vectors (CLIP), full key vectors
    vision_layer_offset = 1
    vision_cls_score = "full"
    vision_keys = "full"

    @property
    def enabled(self) -> bool:
        return True

    def _kept(self, importance: torch.Tensor):
        """(P,) -> (kept indices in output order, outlier ratio)."""
        return adaptive_selection(importance, self.config.iqr_scale)

    def reduce(self, video: VideoContext) -> Reduction:
        cfg = self.config
        outs, kept_all, ratios = [], [], []
        for i in range(video.num_frames):
            imp = video.importance[i]
            idx, r = self._kept(imp)
            if idx.numel() == 0 and not cfg.summary_token:
                # the kit's option summary_token=False would leave the frame empty: keep its top token
                idx = imp.float().argmax()[None]
            outs.append(knn_merge(video.frames[i], imp, video.keys[i], idx, cfg.k_neighbors, cfg.summary_token))
            kept = torch.zeros(imp.numel(), dtype=torch.bool, device=imp.device)
            kept[idx] = True
            kept_all.append(kept)
            ratios.append(r)
        kept = torch.stack(kept_all)
        return Reduction(tokens=torch.cat(outs), kept=kept,
                         info={"kept_per_frame": kept.sum(1).tolist(), "outlier_ratio_per_frame": ratios})


class PruMergePlusMethod(PruMergeMethod):
    name = "prumerge+"
    config_class = PruMergePlusConfig

    @property
    def enabled(self) -> bool:
        cfg = self.config
        return cfg.retain is None or cfg.retain < 1.0 or cfg.k_neighbors > 0 or cfg.summary_token

    @property
    def prunes(self) -> bool:
        return self.config.retain is None or self.config.retain < 1.0

    def _kept(self, importance: torch.Tensor):
        idx, r = super()._kept(importance)
        p = importance.numel()
        n_total = None if self.config.retain is None else count_for_ratio(self.config.retain, p)
        return torch.cat([idx, spatial_samples(idx, p, r, n_total)]), r
