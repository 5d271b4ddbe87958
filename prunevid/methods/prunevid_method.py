"""``prunevid``: stage 1 (``prunevid.merge``) before the LLM, stage 2 (``prunevid.prune``) inside it.

Matched budgets: ``PruneVidConfig.retain`` (None by default: the paper's alpha is used unchanged). When set,
``alpha_for_budget`` searches alpha on this video's stage-1 groups — the largest alpha on a 0.001 grid whose
kept count ``sum_i floor(alpha S_i) + W_i floor(alpha D_i)`` stays at or below ``retain x visual_tokens_in``
(the smallest grid alpha when even that keeps more). When stage 1 alone already keeps fewer tokens than the
target (alpha = 1 cannot reach it), stage 1 is re-run with ``cluster_ratio`` raised along
``CLUSTER_RATIO_STEPS`` and then, at cluster_ratio 1, ``tau`` raised along ``TAU_STEPS`` (fewer static
locations), taking the first setting whose stage-1 output reaches the target; alpha is then searched on it.
With ``stage1_min_ratio`` (a named option; None by default) stage 1 is relaxed the same way until it keeps at
least that share of the visual tokens (or the target, if larger), so stage 2 carries more of the cut.
The settings used are in ``prunevid.patch.info(model)["budget"]``; the achieved ratio is always in the stats.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from ..config import PruneVidConfig
from ..layer_pruner import Stage2Plan
from ..merge import merge_video_tokens
from ..prune import kept_count
from .base import LayerSchedule, Method, Reduction, SequenceLayout, VideoContext

ALPHA_GRID = [i / 1000 for i in range(1, 1001)]
CLUSTER_RATIO_STEPS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
TAU_STEPS = (0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)


def alpha_for_budget(static_sizes: Sequence[int], dynamic_sizes: Sequence[int], window_sizes: Sequence[int],
                     target: int) -> tuple:
    """(alpha, kept, reachable): the largest grid alpha keeping <= ``target`` tokens (see module doc)."""
    best = None
    for a in ALPHA_GRID:
        n = kept_count(static_sizes, dynamic_sizes, window_sizes, a)
        if n <= target:
            best = (a, n)
        else:
            break                                                     # kept_count is monotone in alpha
    if best is None:
        a = ALPHA_GRID[0]
        return a, kept_count(static_sizes, dynamic_sizes, window_sizes, a), False
    full = kept_count(static_sizes, dynamic_sizes, window_sizes, 1.0)
    return best[0], best[1], not (best[0] == 1.0 and full < target)


class PruneVidMethod(Method):
    name = "prunevid"
    config_class = PruneVidConfig

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def validate(self, num_layers: int) -> None:
        cfg = self.config
        if cfg.stage2 and cfg.selected_layer >= num_layers:
            raise ValueError(f"selected_layer={cfg.selected_layer} is beyond the language model's depth: it has "
                             f"{num_layers} decoder layers (valid: 0..{num_layers - 1})")

    def _stage1(self, frames, video: VideoContext, tau: float, cluster_ratio: float, generator) -> Reduction:
        cfg = self.config
        merged = merge_video_tokens(frames, tau=tau, temporal_segment_ratio=cfg.temporal_segment_ratio,
                                    cluster_ratio=cluster_ratio, k=cfg.k, generator=generator,
                                    min_merge_size=cfg.min_merge_size)
        return Reduction(tokens=merged.tokens, static_sizes=list(merged.static_sizes),
                         dynamic_sizes=list(merged.dynamic_sizes), window_sizes=list(merged.window_sizes),
                         info={"merge": merged})

    def _fresh_generator(self, video: VideoContext):
        seed = self.config.seed
        return video.generator if seed is None else torch.Generator().manual_seed(seed)

    def reduce(self, video: VideoContext) -> Optional[Reduction]:
        cfg = self.config
        frames = video.frames
        n_frames, per_frame = frames.shape[:2]
        self.alpha = cfg.alpha
        if cfg.stage1:
            red = self._stage1(frames, video, cfg.tau, cfg.cluster_ratio, video.generator)
        else:  # stage 2 alone: every frame is one dynamic group of one segment
            red = Reduction(tokens=frames.reshape(-1, frames.shape[-1]), static_sizes=[0],
                            dynamic_sizes=[n_frames * per_frame], window_sizes=[n_frames], info={"merge": None})
        retain = getattr(cfg, "retain", None)
        if retain is None:
            return red
        target = int(retain * n_frames * per_frame + 1e-9)
        # what stage 1 must keep: the target (official), or more where stage1_min_ratio moves budget to stage 2
        min_ratio = getattr(cfg, "stage1_min_ratio", None)
        floor = target if min_ratio is None else max(target, math.ceil(min_ratio * n_frames * per_frame - 1e-9))
        tau, cluster_ratio = cfg.tau, cfg.cluster_ratio
        if cfg.stage1 and red.num_tokens < floor:           # stage 1 keeps too few: merge less
            trials = [(cfg.tau, c) for c in CLUSTER_RATIO_STEPS if c > cfg.cluster_ratio]
            trials += [(t, 1.0) for t in TAU_STEPS if t > cfg.tau]
            for tau, cluster_ratio in trials:
                red = self._stage1(frames, video, tau, cluster_ratio, self._fresh_generator(video))
                if red.num_tokens >= floor:
                    break
        if cfg.stage2:
            alpha, kept, ok = alpha_for_budget(red.static_sizes, red.dynamic_sizes, red.window_sizes, target)
            self.alpha = alpha
        else:
            alpha, kept, ok = None, red.num_tokens, red.num_tokens <= target
        note = None if ok else ("stage 1 keeps fewer tokens than the target even at tau=1, cluster_ratio=1"
                                if kept < target else "the smallest alpha keeps more than the target")
        red.info["budget"] = {"target_ratio": retain, "target_tokens": target, "alpha": alpha, "tau": tau,
                              "cluster_ratio": cluster_ratio, "stage1_min_tokens": floor, "expected_tokens": kept, "reachable": ok,
                              "note": note}
        return red

    def entering(self, n_visual: float, given: Optional[float] = None) -> float:
        if given is not None or not self.config.stage1:
            return n_visual if given is None else given
        raise ValueError("prunevid: the tokens after stage 1 depend on the video; give the count (entering=, the "
                         "CLI's --stage1-ratio)")

    def schedule(self, n_layers: int, n_text: float, n_visual: float, *, entering: Optional[float] = None,
                 kept: Optional[float] = None) -> LayerSchedule:
        """Layers 0..K (``selected_layer``, inclusive) run on the stage-1 tokens, layers K+1.. on the kept ones,
        and every layer's cache holds the kept ones (the caches of 0..K are cut after layer K). ``kept``
        defaults to ``retain x n_visual`` with a budget, else ``alpha x`` the stage-1 count (floor per group
        in a real prefill)."""
        cfg = self.config
        e = self.entering(n_visual, entering)
        if not cfg.stage2:
            return LayerSchedule([e] * n_layers, [e] * n_layers)
        k = cfg.selected_layer
        if not 0 <= k < n_layers:
            raise ValueError(f"selected_layer={k} must be in 0..{n_layers - 1} (0-indexed, inclusive)")
        if kept is None:
            kept = cfg.retain * n_visual if cfg.retain is not None else cfg.alpha * e
        if kept > e + 1e-9:
            raise ValueError(f"the kept tokens ({kept}) cannot exceed the stage-1 tokens ({e})")
        return LayerSchedule([e] * (k + 1) + [kept] * (n_layers - k - 1), [kept] * n_layers)

    def plan(self, layout: SequenceLayout) -> Optional[Stage2Plan]:
        cfg = self.config
        if not cfg.stage2:
            return None
        red = layout.reduction
        return Stage2Plan(seq_len=layout.seq_len, visual_start=layout.visual_start, visual_len=layout.visual_len,
                          query_start=layout.query_start, static_sizes=list(red.static_sizes),
                          dynamic_sizes=list(red.dynamic_sizes), window_sizes=list(red.window_sizes),
                          alpha=getattr(self, "alpha", cfg.alpha), layer=cfg.selected_layer, scoring=cfg.scoring,
                          reduce=cfg.score_reduce)
