"""``holitom``: HoliTom (Shao et al., NeurIPS'25) — holistic token merging: temporal windows and per-frame selection
before the LLM, and an optional merge of the visual tokens inside it ("M").

Transcribed from the authors' code, cokeshao/HoliTom (read at commit e9b2972), no line of it copied:
``holitom/llava_arch.py`` (``prepare_inputs_labels_for_multimodal``, ``select_static_windows``,
``get_static_dynamic_features``, ``holitom``, ``merge_tokens_by_attention_density``, ``merge_tokens_by_density``,
``cluster_dpc_knn``, ``merge_tokens_by_clustering``) and ``holitom/modeling_qwen2.py`` (``Qwen2Model_holitom.
forward``). Defaults: the environment defaults of ``llava_arch.py`` (BETA 0.6, D 0, K 7, MAX_WINDOW_SIZE 1024) and
the released script ``scripts/eval_ov-7b_holitom.sh`` (RETAIN_RATIO 0.10 / 0.15 / 0.20 / 0.25 with T 0.65 at
0.10 and 0.80 otherwise, HOLITOM_k 18, HOLITOM_r 0.5; the kit's default ``ratio`` is its 0.25 row).

Outer-LLM merging, on the pooled frame features (F, P, C) and the vision tower's attention pooled alike (F, P):

1. ``frame_similarity``: cosine similarity of the same location in adjacent frames, (F - 1, P), in the features'
   dtype (upstream normalises, then ``cosine_similarity``);
2. ``static_counts``: for a window of frames [s, e] the tokens its static merge removes,
   ``(e - s) x #{locations with sim > tau at every frame pair of the window}``, (F, F) (0 where e <= s);
3. ``select_windows`` (dynamic programming over the frames): ``dp[i] = max(dp[i-1], max over window sizes
   w = 2..min(i+1, max_window) of dp[i-w] + count[i-w+1, i])`` with a strict ``>`` (ties keep the shorter
   window, size 1 first); the windows are read back from the last frame. ``reduced`` = ``dp[F-1]``;
4. the share ``ratio`` is rescaled to what is left after the static merge:
   ``r' = min(ratio / ((N - reduced) / N), 1)`` (``rescaled_ratio``), N = F x P;
5. per window of W >= 2 frames: the static locations (sim > tau across the whole window) are averaged over the
   window's frames, one token per location, and clustered (``density_merge``: ``round(S x r')`` DPC-KNN centres,
   ``k = min(K, centres)`` neighbours; each centre becomes ``beta x centre + (1 - beta) x mean(its members)``, or
   itself when it has none; centres in location order). The dynamic locations of each frame
   (``attention_density_merge``): ``n = ceil(D_n x r')`` of them, ``round(n x (1 - D))`` dominant by vision
   attention (top-k, in location order), the rest as ``density_merge`` clusters of the others. A window of one
   frame: every location is dynamic;
6. output per window: its static tokens, then its frames' dynamic tokens frame by frame (upstream's
   ``mm_newline_position`` "one_token" layout, LLaVA-OneVision's).

Inner-LLM merging ("M", ``inner_ratio`` > 0): layer ``inner_layer - 1`` (HOLITOM_k - 1) runs on every token and
its attention of the last token (RoPE, causal, mean over heads) ranks the visual tokens; the
``round(N' x (1 - inner_ratio))`` best are kept (N' the visual tokens that entered); each dropped token is merged
into its most cosine-similar kept token (hidden states at that layer's output) by a running average in index
order (``inner_merge``: a kept token t with dropped d_1 < .. < d_m becomes
``2^-m t + sum_j 2^-(m-j+1) d_j``); layers ``inner_layer..`` run on the kept tokens. Carried out by the shared
``LayerPruner`` (a ``CutPlan`` of one ``HoliTomMergeCut``: an ``"output"`` cut whose ``fold`` merges;
``cache="own"``: layers 0..inner_layer-1 keep every token in their KV cache, as upstream's).

Kit adaptations (``docs/fidelity.md``): the vision attention is the kit's probe of the feature layer (SigLIP: the
attention each patch receives, mean over heads and queries, as HoliTom's encoder; CLIP towers, which upstream
does not run: the CLS row, summed over heads), pooled like the features; the in-LLM ranking is computed from the
layer's own q/k for the last row only (SDPA keeps running; upstream switches that layer to eager attention);
kept tokens keep their original RoPE positions after the inner merge (upstream passes the kept indices as
positions too) while the tokens entering the LLM are renumbered (upstream's LLaVA layout); LLaVA-OneVision's
image-newline after the video counts as text (never ranked, never merged); the running average of step "M" is
one float32 pass with the same weights (upstream: one token at a time in the model dtype); the DPC-KNN
tie-break noise comes from the prefill's seeded generator; ``ceil`` is float-robust (``robust_ceil``);
``ratio = 1`` with ``inner_ratio = 0`` is the no-op (upstream at RETAIN_RATIO 1 still averages the static
windows), and ``ratio = 1`` skips the outer step (only "M" runs).

Matched budget ``retain``: the visual tokens per decoder layer averaged over the prefill, over the N in (what
FLOPs follow; ``budget_measure = "layer_average"``): ``ratio`` is solved per video (the windows do not depend
on it) as the largest one whose layer average, with the counts as the prefill makes them, is at or below
``retain`` (``ratio_for_budget``). ``info["holitom"]`` holds the windows, the counts, the layer average and the
final KV ratio of every prefill.

Architectures: every one whose vision attention the kit extracts (LLaVA-OneVision, LLaVA-NeXT-Video, PLLaVA and
their tiny models); not Qwen2-VL / Qwen2.5-VL, whose vision attention the kit does not extract (the model file
raises a clear ``NotImplementedError``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..config import _check_int, _check_number
from ..layer_pruner import CutPlan, LayerCut
from ..merge import dpc_knn
from ..prune import top_k_sorted
from .base import ConfigMixin, LayerSchedule, Method, Reduction, SequenceLayout, VideoContext

DEFAULT_INNER_LAYER = 18
BUDGET_SLACK = 0.02          # a matched budget counts as reached within 2 points of the target


def default_tau(ratio: float) -> float:
    """The released script's pairing (``scripts/eval_ov-7b_holitom.sh``): T = 0.65 at RETAIN_RATIO 0.10 (and
    below), 0.80 above."""
    return 0.65 if ratio <= 0.10 + 1e-12 else 0.80


@dataclass
class HoliTomConfig(ConfigMixin):
    """``ratio``: share of the visual tokens entering the LLM (upstream's RETAIN_RATIO; 1.0 skips the outer step);
    ``tau``: the static threshold T (None: the script's pairing with ``ratio``, ``default_tau``); ``beta``: weight
    of a cluster centre against its members' mean (BETA); ``dominant_share`` (D): share of a frame's dynamic
    budget taken as clusters instead of by attention (0: attention only); ``k_neighbors`` (K): DPC-KNN
    neighbours; ``max_window``: longest temporal window (MAX_WINDOW_SIZE); ``inner_layer`` (HOLITOM_k): the first
    decoder layer that runs on the merged tokens (None: resolved from the model, 18, or by the depth rule on a
    shallower model); ``inner_ratio`` (HOLITOM_r): share of the entering visual tokens merged away there (0: no
    inner merge, upstream's "w/o M"); ``retain``: the matched budget (visual tokens per decoder layer averaged over
    the prefill / visual tokens in), which overrides ``ratio`` (solved per video)."""

    ratio: float = 0.25
    tau: Optional[float] = None
    beta: float = 0.6
    dominant_share: float = 0.0
    k_neighbors: int = 7
    max_window: int = 1024
    inner_layer: Optional[int] = None
    inner_ratio: float = 0.5
    retain: Optional[float] = None

    layer_fields: ClassVar[dict] = {"inner_layer": DEFAULT_INNER_LAYER}

    def __post_init__(self):
        self.ratio = _check_number("ratio", self.ratio, 0.0, 1.0, lo_open=True)
        if self.tau is not None:
            self.tau = _check_number("tau", self.tau, -1.0, 1.0)
        self.beta = _check_number("beta", self.beta, 0.0, 1.0)
        self.dominant_share = _check_number("dominant_share", self.dominant_share, 0.0, 1.0)
        self.k_neighbors = _check_int("k_neighbors", self.k_neighbors, 1)
        self.max_window = _check_int("max_window", self.max_window, 1)
        if self.inner_layer is not None:
            self.inner_layer = _check_int("inner_layer", self.inner_layer, 1)
        # upstream's r = 1 would keep round(0) = 0 visual tokens: the kit asks for at least one
        self.inner_ratio = _check_number("inner_ratio", self.inner_ratio, 0.0, 1.0)
        if self.inner_ratio >= 1.0:
            raise ValueError(f"inner_ratio must be in [0, 1) (the share merged away at inner_layer), "
                             f"got {self.inner_ratio!r}")
        if self.retain is not None:
            self.retain = _check_number("retain", self.retain, 0.0, 1.0, lo_open=True)

    @property
    def threshold(self) -> float:
        return default_tau(self.ratio) if self.tau is None else self.tau


# ------------------------------------------------------------------------------------------------ kernel steps
def robust_ceil(x: float) -> int:
    """``ceil(x)`` robust to float error (0.1 x 30 = 3.0000000000000004 -> 3, not 4)."""
    return int(math.ceil(x - 1e-9))


def frame_similarity(frames: torch.Tensor) -> torch.Tensor:
    """(F, P, C) -> (F - 1, P): cosine similarity of each location with the same location in the next frame."""
    x = F.normalize(frames, p=2, dim=-1)
    return F.cosine_similarity(x[:-1], x[1:], dim=-1)


def static_counts(sim: torch.Tensor, tau: float) -> torch.Tensor:
    """(F - 1, P) adjacent-frame similarities -> (F, F) float: ``[s, e]`` = tokens the static merge of window
    [s, e] removes, ``(e - s) x`` the locations whose similarity is above ``tau`` at every pair of the window
    (upstream's ``pruned_static_count``); 0 where ``e <= s``."""
    n_frames = sim.shape[0] + 1
    out = torch.zeros(n_frames, n_frames, dtype=torch.float32, device=sim.device)
    above = (sim > tau)
    for s in range(n_frames - 1):
        still = torch.cumprod(above[s:].to(torch.int64), dim=0)           # (F - 1 - s, P): static through e
        length = torch.arange(1, n_frames - s, device=sim.device, dtype=torch.float32)
        out[s, s + 1:] = still.sum(dim=-1).float() * length
    return out


def select_windows(counts: torch.Tensor, max_window: int = 1024) -> Tuple[List[Tuple[int, int]], float]:
    """(F, F) ``static_counts`` -> (windows [(start, end)] covering the frames in order, tokens removed).

    ``dp[i]`` = the most tokens the static merges of frames 0..i remove: frame i alone (``dp[i-1]``), or a
    window of w = 2..min(i + 1, max_window) frames ending at i (``dp[i-w] + counts[i-w+1, i]``, ``dp[-1] = 0``);
    a longer window replaces the best so far only when strictly better."""
    n = counts.shape[0]
    c = counts.tolist()
    dp = [0.0] * n
    prev = [0] * n
    for i in range(n):
        best, start = (dp[i - 1] if i > 0 else 0.0), i
        for w in range(2, min(i + 1, max_window) + 1):
            j = i - w
            val = (dp[j] if j >= 0 else 0.0) + c[j + 1][i]
            if val > best:
                best, start = val, j + 1
        dp[i], prev[i] = best, start
    windows, i = [], n - 1
    while i >= 0:
        windows.append((prev[i], i))
        i = prev[i] - 1
    return windows[::-1], (dp[-1] if n else 0.0)


def static_mask(sim: torch.Tensor, start: int, end: int, tau: float) -> torch.Tensor:
    """(P,) bool: the locations static through window [start, end] (all P False for a window of one frame)."""
    if end <= start:
        return torch.zeros(sim.shape[1], dtype=torch.bool, device=sim.device)
    return (sim[start:end] > tau).all(dim=0)


def rescaled_ratio(ratio: float, total: int, reduced: float) -> float:
    """``min(ratio / ((total - reduced) / total), 1)``: the share of what the static merge left that keeps
    ``ratio x total`` overall."""
    return min(ratio / ((total - reduced) / total), 1.0)


def window_counts(n_static: int, n_dynamic: int, r: float, dominant_share: float = 0.0) -> Tuple[int, int, int]:
    """(static clusters, dominant, contextual) tokens of one window with ``n_static`` static and ``n_dynamic``
    dynamic locations per frame, at the rescaled ratio ``r``: ``round(S r)``; of ``n = ceil(D_n r)`` per frame,
    ``round(n (1 - D))`` dominant and ``n`` minus that contextual."""
    n = robust_ceil(n_dynamic * r)
    dom = int(round(n * (1 - dominant_share)))
    return int(round(n_static * r)), dom, n - dom


def density_merge(x: torch.Tensor, n_clusters: int, k: int = 7, beta: float = 0.6,
                  generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, C) tokens -> (merged (n_clusters, C), centres (n_clusters,) sorted, labels (N,) row of each token).

    Centres: DPC-KNN (``prunevid.merge.dpc_knn``) with ``min(k, n_clusters)`` neighbours, sorted by index; every
    other token joins its nearest centre (distance ``cdist / sqrt(C)`` in float32, first sorted centre on ties);
    a centre with members becomes ``beta x centre + (1 - beta) x mean(members)``, one without stays itself."""
    n = x.shape[0]
    if n_clusters <= 0 or n == 0:
        return x[:0], torch.zeros(0, dtype=torch.long, device=x.device), torch.full((n,), -1, dtype=torch.long,
                                                                                      device=x.device)
    n_clusters = min(n_clusters, n)
    _, centres = dpc_knn(x, n_clusters, k=min(k, n_clusters), generator=generator, return_centers=True)
    centres = centres.sort().values
    xf = x.float()
    dist = torch.cdist(xf, xf) / (x.shape[-1] ** 0.5)
    labels = dist[:, centres].argmin(dim=1)
    labels[centres] = torch.arange(n_clusters, device=x.device)
    members = torch.ones(n, dtype=torch.bool, device=x.device)
    members[centres] = False
    sums = torch.zeros(n_clusters, x.shape[1], dtype=torch.float32, device=x.device)
    sums.index_add_(0, labels[members], xf[members])
    counts = torch.bincount(labels[members], minlength=n_clusters).to(torch.float32)
    means = sums / counts.clamp_min(1)[:, None]
    merged = torch.where(counts[:, None] > 0, beta * xf[centres] + (1 - beta) * means, xf[centres])
    return merged.to(x.dtype), centres, labels


def holitom_outer(frames: torch.Tensor, importance: torch.Tensor, ratio: float, tau: float, *, beta: float = 0.6,
                  dominant_share: float = 0.0, k: int = 7, max_window: int = 1024,
                  generator: Optional[torch.Generator] = None, windows=None) -> dict:
    """The outer-LLM merge of one video: (F, P, C) frames, (F, P) vision attention -> a dict with ``tokens``
    (N', C) in upstream's order (per window: static clusters, then each frame's dynamic tokens), ``kept`` (F, P)
    bool (dominant tokens, and each static cluster's centre in its window's first frame), ``windows``,
    ``reduced``, ``ratio`` (the rescaled r') and per window ``static`` / ``dominant`` / ``contextual`` counts.
    ``windows``: (windows, reduced) already chosen (``choose_windows``)."""
    f, p, _ = frames.shape
    sim = frame_similarity(frames) if f > 1 else frames.new_zeros(0, p)
    if windows is None:
        windows = choose_windows(frames, tau, max_window)
    wins, reduced = windows
    r = rescaled_ratio(ratio, f * p, reduced)
    out, counts = [], []
    kept = torch.zeros(f, p, dtype=torch.bool, device=frames.device)
    for s, e in wins:
        mask = static_mask(sim, s, e, tau)
        n_static = int(mask.sum())
        n_s, n_dom, n_ctx = window_counts(n_static, p - n_static, r, dominant_share)
        if n_static:
            static = frames[s:e + 1][:, mask].mean(dim=0)                     # (S, C), features' dtype
            merged, centres, _ = density_merge(static, n_s, k, beta, generator)
            out.append(merged)
            kept[s, mask.nonzero().squeeze(1)[centres]] = True
        dyn = (~mask).nonzero().squeeze(1)
        for t in range(s, e + 1):
            dominant = top_k_sorted(importance[t, dyn].float(), n_dom)
            out.append(frames[t, dyn[dominant]])
            kept[t, dyn[dominant]] = True
            if n_ctx > 0:
                rest = torch.ones(dyn.numel(), dtype=torch.bool, device=frames.device)
                rest[dominant] = False
                ctx, _, _ = density_merge(frames[t, dyn[rest]], n_ctx, k, beta, generator)
                out.append(ctx)
        counts.append({"frames": [s, e], "static_locations": n_static, "static": n_s, "dominant": n_dom,
                       "contextual": n_ctx})
    return {"tokens": torch.cat(out) if out else frames.reshape(-1, frames.shape[-1])[:0], "kept": kept,
            "windows": wins, "reduced": reduced, "ratio": r, "counts": counts}


def choose_windows(frames: torch.Tensor, tau: float, max_window: int = 1024):
    """(F, P, C) -> (windows, tokens removed): ``select_windows`` on ``static_counts`` of ``frame_similarity``."""
    if frames.shape[0] < 2:
        return [(0, 0)] * frames.shape[0], 0.0
    return select_windows(static_counts(frame_similarity(frames), tau), max_window)


def outer_count(static_locations: Sequence[int], window_frames: Sequence[int], p: int, ratio: float,
                total: int, reduced: float, dominant_share: float = 0.0) -> int:
    """Tokens the outer merge outputs at ``ratio`` for windows of ``window_frames`` frames with
    ``static_locations`` static locations each (what ``holitom_outer`` makes, without the features)."""
    r = rescaled_ratio(ratio, total, reduced)
    out = 0
    for n_static, w in zip(static_locations, window_frames):
        n_s, n_dom, n_ctx = window_counts(n_static, p - n_static, r, dominant_share)
        out += n_s + w * (n_dom + min(n_ctx, p - n_static - n_dom))
    return out


def inner_keep(n: int, inner_ratio: float) -> int:
    """Visual tokens kept at the inner merge: ``round(n x (1 - r))`` (Python's round, as upstream)."""
    return int(round(n * (1 - inner_ratio)))


def layer_mean(n_layers: int, inner_layer: int, entering: float, kept: float, n_in: float) -> float:
    """Visual tokens per layer averaged over the prefill, over ``n_in``: ``inner_layer`` layers on ``entering``,
    the rest on ``kept``."""
    return (inner_layer * entering + (n_layers - inner_layer) * kept) / (n_layers * n_in)


def inner_merge(hidden: torch.Tensor, kept: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """(T, D) hidden states, kept (K,) and dropped (M,) sequence indices -> (T, D) with every dropped token merged
    into its most cosine-similar kept token by upstream's running average in increasing dropped index:
    ``h_t <- (h_t + h_d) / 2`` each time, i.e. ``2^-m h_t + sum_j 2^-(m-j+1) h_{d_j}`` for the m tokens
    d_1 < .. < d_m merged into t (one float32 pass; similarities from the states before any merge)."""
    out = hidden.clone()
    if dropped.numel() == 0 or kept.numel() == 0:
        return out
    dropped = dropped.sort().values
    h = hidden.float()
    sim = F.normalize(h[dropped], dim=-1) @ F.normalize(h[kept], dim=-1).T     # (M, K)
    target = sim.argmax(dim=1)                                                   # (M,) index into kept
    m = torch.bincount(target, minlength=kept.numel())                           # (K,) tokens merged into each
    # rank j (1-based) of each dropped token among those merged into the same kept token, in index order
    order = torch.argsort(target, stable=True)
    start = torch.cumsum(m, 0) - m
    rank = torch.empty_like(target)
    rank[order] = torch.arange(target.numel(), device=target.device) - start[target[order]] + 1
    weight = torch.pow(2.0, -(m[target] - rank + 1).float())                    # (M,)
    acc = h[kept] * torch.pow(2.0, -m.float())[:, None]
    acc.index_add_(0, target, h[dropped] * weight[:, None])
    out[kept] = acc.to(hidden.dtype)
    return out


@dataclass
class HoliTomMergeCut(LayerCut):
    """The inner merge as a ``LayerCut``: ranked like PyramidDrop's / FastV's cut (last row, RoPE, causal, mean
    over heads, at the layer ``inner_layer - 1``, ``at="output"``); ``fold`` merges the dropped visual tokens into
    the kept ones (``inner_merge``) before keeping the kept rows."""

    at: str = "output"
    visual: Optional[slice] = None                 # the visual span of the sequence the cut saw

    def choose(self, layer, hidden, kwargs, visual, query_start):
        self.visual = visual
        return super().choose(layer, hidden, kwargs, visual, query_start)

    def fold(self, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        vis = self.visual
        span = torch.arange(vis.start, vis.stop, device=hidden.device)
        keep = keep.to(hidden.device)
        kept = keep[(keep >= vis.start) & (keep < vis.stop)]
        dropped = span[~torch.isin(span, kept)]
        merged = inner_merge(hidden[0], kept, dropped)
        return merged.index_select(0, keep)[None]


# ------------------------------------------------------------------------------------------------ the method
class HoliTomMethod(Method):
    name = "holitom"
    config_class = HoliTomConfig
    budget_measure = "layer_average"        # retain: visual tokens per decoder layer, averaged over the prefill
    needs_vision_attention = True
    vision_layer_offset = 0                 # the feature layer's attention (HoliTom's SigLIP: ``attentions[-1]``)
    vision_cls_score = "heads_sum"          # CLIP towers: the CLS row (SigLIP has none: the attention received)

    def __init__(self, config):
        super().__init__(config)
        self._n_layers: Optional[int] = None

    @property
    def enabled(self) -> bool:
        cfg = self.config
        return cfg.retain is not None or cfg.ratio < 1.0 or cfg.inner_ratio > 0

    @property
    def outer(self) -> bool:
        return self.config.retain is not None or self.config.ratio < 1.0

    @property
    def inner(self) -> bool:
        return self.config.inner_ratio > 0

    def _inner_layer(self, n_layers: int) -> int:
        k = self.config.inner_layer if self.config.inner_layer is not None else DEFAULT_INNER_LAYER
        if not 1 <= k <= n_layers - 1:
            raise ValueError(f"HoliTom inner_layer={k} does not fit the language model's {n_layers} decoder layers: "
                             f"the first layer on the merged tokens must be in 1..{n_layers - 1} (layer "
                             f"inner_layer - 1 ranks the tokens)")
        return k

    def validate(self, num_layers: int) -> None:
        self._n_layers = num_layers
        if self.inner:
            self._inner_layer(num_layers)

    def _layers_at_entering(self, n_layers: int) -> int:
        return self._inner_layer(n_layers) if self.inner else n_layers

    def ratio_for_budget(self, n_layers: int, static_locations, window_frames, p: int, total: int,
                         reduced: float) -> tuple:
        """(ratio, layer mean, reachable) for ``retain``: the largest ratio in (0, 1] whose layer average (outer
        counts as ``outer_count`` makes them, then the inner merge) is at or below ``retain``, by bisection.
        Unreachable: the smallest ratio already averages more, or the static windows alone leave less than
        ``retain - 0.02`` at ratio 1 (upstream caps the rescaled ratio at 1)."""
        cfg = self.config
        k = self._layers_at_entering(n_layers)

        def mean(ratio):
            e = outer_count(static_locations, window_frames, p, ratio, total, reduced, cfg.dominant_share)
            kept = inner_keep(e, cfg.inner_ratio) if self.inner else e
            return layer_mean(n_layers, k, e, kept, total)

        top = mean(1.0)
        if top <= cfg.retain + 1e-12:
            return 1.0, top, top >= cfg.retain - BUDGET_SLACK
        lo, hi = 1e-9, 1.0
        if mean(lo) > cfg.retain + 1e-12:
            return lo, mean(lo), False
        for _ in range(50):
            mid = (lo + hi) / 2
            if mean(mid) <= cfg.retain + 1e-12:
                lo = mid
            else:
                hi = mid
        return lo, mean(lo), True

    def reduce(self, video: VideoContext) -> Optional[Reduction]:
        if not self.outer:
            return None
        cfg = self.config
        frames = video.frames
        f, p = frames.shape[:2]
        if video.importance is None:
            raise ValueError("holitom needs the vision tower's attention (VideoContext.importance)")
        tau = cfg.threshold
        wins = choose_windows(frames, tau, cfg.max_window)
        ratio, budget = cfg.ratio, None
        if cfg.retain is not None:
            sim = frame_similarity(frames) if f > 1 else frames.new_zeros(0, p)
            statics = [int(static_mask(sim, s, e, tau).sum()) for s, e in wins[0]]
            sizes = [e - s + 1 for s, e in wins[0]]
            n_layers = self._n_layers if self._n_layers is not None else DEFAULT_INNER_LAYER + 1
            ratio, mean, ok = self.ratio_for_budget(n_layers, statics, sizes, p, f * p, wins[1])
            note = None
            if not ok and mean > cfg.retain:
                note = (f"holitom cannot average fewer than {mean:.3f} of the visual tokens per layer here (the "
                        f"static windows and one dynamic token per frame stay)")
            elif not ok:
                note = (f"holitom cannot average more than {mean:.3f} of the visual tokens per layer here: its static "
                        f"windows (tau={tau}) already merge more than the budget asks (ran at ratio 1)")
            budget = {"target_ratio": cfg.retain, "ratio": ratio, "expected_ratio": mean, "reachable": ok,
                      "note": note}
        res = holitom_outer(frames, video.importance, ratio, tau, beta=cfg.beta, dominant_share=cfg.dominant_share,
                            k=cfg.k_neighbors, max_window=cfg.max_window, generator=video.generator, windows=wins)
        info = {"holitom": {"ratio": ratio, "tau": tau, "windows": [list(w) for w in res["windows"]],
                            "reduced": res["reduced"], "rescaled_ratio": res["ratio"], "counts": res["counts"]}}
        if budget is not None:
            info["budget"] = budget
        return Reduction(tokens=res["tokens"], kept=res["kept"], info=info)

    def plan(self, layout: SequenceLayout) -> Optional[CutPlan]:
        n, n_layers = layout.visual_len, layout.num_layers
        record = None
        if layout.reduction is not None:
            record = layout.reduction.info.setdefault("holitom", {})
        if not self.inner or n == 0:
            if record is not None:
                record.update(layer_mean_ratio=n / layout.visual_tokens_in if layout.visual_tokens_in else None,
                              final_kv_ratio=n / layout.visual_tokens_in if layout.visual_tokens_in else None)
            return None
        k = self._inner_layer(n_layers)
        keep = inner_keep(n, self.config.inner_ratio)
        if record is not None and layout.visual_tokens_in:
            record.update(inner_layer=k, entering=n, inner_kept=keep,
                          layer_mean_ratio=layer_mean(n_layers, k, n, keep, layout.visual_tokens_in),
                          final_kv_ratio=keep / layout.visual_tokens_in)
        cut = HoliTomMergeCut(layer=k - 1, n_keep=keep, at="output", scoring="rope_causal", query="last",
                              reduce="mean")
        return CutPlan(seq_len=layout.seq_len, visual_start=layout.visual_start, visual_len=n,
                       query_start=layout.query_start, cuts=[cut], cache="own")

    def entering(self, n_visual: float, given: Optional[float] = None) -> float:
        """The visual tokens entering the LLM: ``given``; else all of them (no outer step); else the outer step's
        target, ``ratio x N`` (the video's windows move it by a few tokens: give the recorded count where there
        was a prefill), with ``retain`` the ratio whose layer average is ``retain`` on the analytic counts."""
        if given is not None:
            return given
        if not self.outer:
            return n_visual
        cfg = self.config
        if cfg.retain is None:
            return cfg.ratio * n_visual
        n_layers = self._n_layers if self._n_layers is not None else DEFAULT_INNER_LAYER + 1
        k = self._layers_at_entering(n_layers)
        share = k + ((1 - cfg.inner_ratio) * (n_layers - k) if self.inner else n_layers - k)
        return min(1.0, cfg.retain * n_layers / share) * n_visual

    def schedule(self, n_layers: int, n_text: float, n_visual: float, *, entering: Optional[float] = None,
                 kept: Optional[float] = None) -> LayerSchedule:
        """Layers 0..inner_layer-1 on the tokens entering (and caching all of them), inner_layer.. on the kept
        ones, ``round(entering x (1 - inner_ratio))`` (``kept``: the recorded count); without "M" every layer on
        what enters."""
        self._n_layers = n_layers
        e = self.entering(n_visual, entering)
        if not self.inner:
            return LayerSchedule([e] * n_layers, [e] * n_layers)
        k = self._inner_layer(n_layers)
        if kept is None:
            kept = inner_keep(int(e), self.config.inner_ratio) if float(e).is_integer() \
                else e * (1 - self.config.inner_ratio)
        tokens = [e] * k + [kept] * (n_layers - k)
        return LayerSchedule(tokens, list(tokens))
