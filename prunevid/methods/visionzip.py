"""``visionzip``: VisionZip (Yang et al., CVPR'25), per frame, before the LLM.

Upstream: dvlab-research/VisionZip ``visionzip/clip_encoder.py`` ``CLIPVisionTower_VisionZip.forward`` (CLIP,
LLaVA-1.5) and HoliTom's LLaVA-OneVision port (cokeshao/HoliTom ``visionzip/llava_arch.py``, SigLIP, per frame
on the pooled features). Per frame with P tokens and ``n = floor(retain x P)`` kept:
  1. counts (``split_counts``): ``int(n x dominant_share)`` dominant, the rest contextual (HoliTom:
     ``dominant_num = int(SPATIAL_TOKENS * DOMINANT_RATIO)``, 54/64);
  2. dominant tokens: the top ``n_dominant`` by importance, output in raster order. The importance comes from
     the vision layer whose output the projector reads (``prunevid.models.video_patch``): on CLIP towers
     (LLaVA-NeXT-Video, PLLaVA) the CLS row of its attention summed over heads, as upstream; on SigLIP
     (LLaVA-OneVision), which has no CLS token, the attention each patch receives, mean over heads and queries
     (HoliTom's port; the kit's documented adaptation). Both pooled to the per-frame grid like the features.
     Upstream keeps the CLS token itself among the dominant ones; the video models' features carry no CLS token,
     so all ``n_dominant`` are patches here;
  3. contextual tokens: of the remaining tokens (raster order) ``n_contextual`` evenly spaced targets (every
     ``max(1, R // n_contextual)``-th), every other remaining token is assigned to its most similar target by
     cosine similarity of the same layer's keys (mean over heads, pooled), and each contextual token is
     ``target + mean(assigned tokens)`` (upstream's ``target_hidden + aggregated_hidden``; a target with none
     assigned stays itself).
Output per frame: the dominant tokens in raster order, then the contextual tokens in target order.
Defaults: ``retain=0.25`` (HoliTom's 25% setting, 49 of 196 per frame: 41 dominant + 8 contextual).
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
    """(dominant, contextual) token counts for ``n_keep`` kept tokens of a frame: ``int(n_keep x share)``
    dominant, as HoliTom's port (changed from ``round``: 20 x 54/64 = 16.875 gives 16 dominant, not 17)."""
    n_dom = min(n_keep, int(n_keep * dominant_share))
    return n_dom, n_keep - n_dom


def visionzip_frame(tokens: torch.Tensor, importance: torch.Tensor, keys: torch.Tensor, n_dominant: int,
                    n_contextual: int):
    """One frame: (P, C) tokens, (P,) importance, (P, Dk) keys -> (out (n_dom + n_ctx, C), labels (P,)).

    Contextual token = target + mean of the non-target tokens assigned to it (upstream's rule; before this
    change the kit averaged the target together with them). ``labels[j]`` is the output row token ``j`` went
    into (every token of a frame is represented).
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
        merged = tokens[targets].float()
        labels[targets] = dominant.numel() + torch.arange(targets.numel(), device=tokens.device)
        if others.numel() > 0:
            kn = F.normalize(keys.float(), dim=-1)
            nearest = (kn[others] @ kn[targets].T).argmax(dim=1)          # (n_others,) index into targets
            sums = torch.zeros_like(merged).index_add_(0, nearest, tokens[others].float())
            counts = torch.bincount(nearest, minlength=targets.numel()).clamp_min(1).to(sums.dtype)
            merged = merged + sums / counts[:, None]
            labels[others] = dominant.numel() + nearest
        out.append(merged.to(tokens.dtype))
    return torch.cat(out), labels


class VisionZipMethod(Method):
    name = "visionzip"
    config_class = VisionZipConfig
    needs_vision_attention = True
    # the vision signals (prunevid.models.video_patch.method_probe): the feature layer's CLS attention summed
    # over heads (CLIP) and its keys averaged over heads, upstream's ``metric``
    vision_layer_offset = 0
    vision_cls_score = "heads_sum"
    vision_keys = "head_mean"

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
