"""PruneVid stage 1: spatio-temporal token merging, as pure tensor functions.

Faithful to the official ``merge_frames_dynamic`` (``prunevid-method.md`` §1): temporal segmentation by
DPC-KNN over per-frame mean features with the contiguity repair, a static/dynamic split per segment and
location (strict ``> tau`` on the mean pairwise cosine similarity), temporal averaging of static tokens,
and spatial DPC-KNN merging of the static group and of every frame's dynamic group when the group holds
more than 14 tokens. Output order: per segment, its static tokens, then each frame's dynamic tokens.

Where the official code is undefined we decide explicitly (and say so in the docstrings):
empty static or dynamic groups contribute nothing; a one-frame segment has no static tokens; DPC-KNN
uses ``min(k, N)`` neighbours; a cluster count that rounds to 0 becomes 1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------------------
# DPC-KNN
# ----------------------------------------------------------------------------------------------------------
def dpc_knn(x: torch.Tensor, n_clusters: int, k: int = 7, generator: Optional[torch.Generator] = None,
            *, return_centers: bool = False):
    """Density-peak clustering with k-nearest-neighbour density (the TCFormer/Chat-UniVi variant).

    Args:
        x: (N, C) token features, or (B, N, C) for B independent groups clustered at once (any float dtype;
            distances are computed in float32).
        n_clusters: number of clusters, 1 <= n_clusters <= N.
        k: neighbours for the local density (the token itself included); ``min(k, N)`` is used.
        generator: source of the 1e-6 density tie-break noise; ``None`` uses torch's global RNG.
        return_centers: also return the centre indices, (n_clusters,) or (B, n_clusters), best first.

    Returns:
        labels: (N,) or (B, N) long in [0, n_clusters). Cluster ``c`` is the centre with the c-th highest
        score (density x distance-to-denser), so merged outputs come in score order, as in the official
        code. Every centre carries its own label, hence no cluster is empty.
    """
    if x.dim() not in (2, 3):
        raise ValueError(f"dpc_knn expects x of shape (N, C) or (B, N, C), got {tuple(x.shape)}")
    single = x.dim() == 2
    xb = x[None] if single else x
    b, n, c = xb.shape
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters must be in [1, {n}] for {n} tokens, got {n_clusters}")
    dist, density, delta = _decision_graph(xb, k, generator)
    score = delta * density
    centers = score.topk(n_clusters, dim=-1).indices                        # (B, n_clusters), descending
    to_centers = torch.gather(dist, 1, centers[:, :, None].expand(b, n_clusters, n))   # (B, n_clusters, N)
    labels = to_centers.argmin(dim=1)                                       # nearest centre, ties -> lowest rank
    labels.scatter_(1, centers, torch.arange(n_clusters, device=x.device).expand(b, n_clusters))
    if single:
        labels, centers = labels[0], centers[0]
    return (labels, centers) if return_centers else labels


def _decision_graph(xb: torch.Tensor, k: int, generator: Optional[torch.Generator]):
    """(B, N, C) -> distances (B, N, N), density rho (B, N), distance-to-denser delta (B, N)."""
    b, n, c = xb.shape
    xf = xb.float()
    dist = torch.cdist(xf, xf) / (c ** 0.5)                                  # (B, N, N)
    knn = dist.topk(min(k, n), dim=-1, largest=False).values                # (B, N, k), self included
    density = (-(knn ** 2).mean(dim=-1)).exp()                              # (B, N)
    noise_device = generator.device if generator is not None else dist.device
    noise = torch.rand(b, n, generator=generator, device=noise_device, dtype=density.dtype).to(dist.device)
    density = density + noise * 1e-6
    # Distance to the nearest denser token; the density peak gets the largest distance of its matrix.
    denser = density[:, None, :] > density[:, :, None]                      # [b, i, j]: rho_j > rho_i
    dist_max = dist.flatten(1).max(dim=-1).values[:, None, None]
    delta = torch.where(denser, dist, dist_max).min(dim=-1).values
    return dist, density, delta


def decision_graph(x: torch.Tensor, k: int = 7, generator: Optional[torch.Generator] = None):
    """DPC-KNN's decision graph of (N, C) tokens: (density rho (N,), distance-to-denser delta (N,)).
    Centres are the tokens with the largest rho x delta (what ``dpc_knn`` picks); for plots and teaching."""
    _, density, delta = _decision_graph(x[None], k, generator)
    return density[0], delta[0]


def cluster_means(x: torch.Tensor, labels: torch.Tensor, n_clusters: int) -> torch.Tensor:
    """(N, C) features, (N,) labels -> (n_clusters, C) unweighted member means (float32 sums, cast back).
    Batched: (B, N, C), (B, N) -> (B, n_clusters, C)."""
    if x.dim() == 3:
        b = x.shape[0]
        flat = labels + n_clusters * torch.arange(b, device=labels.device)[:, None]
        return cluster_means(x.reshape(-1, x.shape[-1]), flat.reshape(-1), b * n_clusters).view(b, n_clusters, -1)
    sums = torch.zeros(n_clusters, x.shape[1], device=x.device, dtype=torch.float32)
    sums.index_add_(0, labels, x.float())
    counts = torch.bincount(labels, minlength=n_clusters).clamp_min(1).to(sums.dtype)
    return (sums / counts[:, None]).to(x.dtype)


# ----------------------------------------------------------------------------------------------------------
# Temporal segmentation
# ----------------------------------------------------------------------------------------------------------
def _runs(seq: List[int]) -> List[tuple]:
    """Maximal runs of equal values: [(value, start, end_inclusive), ...]."""
    runs, start = [], 0
    for i in range(1, len(seq) + 1):
        if i == len(seq) or seq[i] != seq[start]:
            runs.append((seq[start], start, i - 1))
            start = i
    return runs


def refine_segments(labels: torch.Tensor) -> torch.Tensor:
    """Contiguity repair of per-frame cluster labels (the official ``refine_clusters``).

    (T,) labels -> (T,) labels whose maximal runs are the temporal segments:
      1. a label whose longest run has length 1 is dissolved (all its frames are reassigned);
         otherwise every run of maximal length is kept (tied runs stay, becoming separate segments)
         and its shorter runs are reassigned;
      2. left to right, each maximal run of reassigned frames takes the label of the longer neighbouring
         run (measured on the already-updated sequence); a tie goes left; with no neighbour, label 0.
    """
    seq = [int(v) for v in labels.tolist()]
    n = len(seq)
    out = list(seq)
    by_label: dict = {}
    for value, s, e in _runs(seq):
        by_label.setdefault(value, []).append((s, e))
    for runs in by_label.values():
        longest = max(e - s + 1 for s, e in runs)
        for s, e in runs:
            if longest == 1 or e - s + 1 < longest:
                out[s:e + 1] = [-1] * (e - s + 1)
    i = 0
    while i < n:
        if out[i] != -1:
            i += 1
            continue
        start = i
        while i < n and out[i] == -1:
            i += 1
        end = i - 1
        left_label, left_len = None, 0
        if start > 0:
            left_label = out[start - 1]
            j = start - 1
            while j >= 0 and out[j] == left_label:
                j -= 1
            left_len = start - 1 - j
        right_label, right_len = None, 0
        if end < n - 1:
            right_label = out[end + 1]
            j = end + 1
            while j < n and out[j] == right_label:
                j += 1
            right_len = j - end - 1
        if left_len > right_len:
            new = left_label
        elif right_len > left_len:
            new = right_label
        else:
            new = left_label if left_label is not None else right_label
        out[start:end + 1] = [0 if new is None else new] * (end - start + 1)
    return torch.tensor(out, dtype=labels.dtype, device=labels.device)


def segment_lengths(labels: torch.Tensor) -> List[int]:
    """(T,) labels -> lengths of the maximal runs, in temporal order (they sum to T)."""
    return [e - s + 1 for _, s, e in _runs([int(v) for v in labels.tolist()])]


def temporal_segments(frame_features: torch.Tensor, temporal_segment_ratio: float, k: int = 7,
                      generator: Optional[torch.Generator] = None):
    """(T, L, C) frames -> (raw labels (T,), refined labels (T,), window sizes).

    DPC-KNN on the per-frame mean token with ``max(1, int(T * ratio))`` clusters, then the repair. The
    number of segments may differ from the cluster count (the maintainers confirmed this, issue #4).
    """
    t = frame_features.shape[0]
    desc = frame_features.mean(dim=1)                                      # (T, C)
    raw = dpc_knn(desc, max(1, int(t * temporal_segment_ratio)), k, generator)
    refined = refine_segments(raw)
    return raw, refined, segment_lengths(refined)


# ----------------------------------------------------------------------------------------------------------
# Static / dynamic split and spatial merging
# ----------------------------------------------------------------------------------------------------------
def static_similarity(segment: torch.Tensor) -> torch.Tensor:
    """(W, L, C) frames of one segment -> (L,) mean cosine similarity over ordered frame pairs w != t.

    The official formula is (sum of the W x W cosine matrix - W) / (W(W-1)), i.e. assuming self-similarity 1.
    The sum of that matrix equals |sum_w x_w / |x_w||^2, which costs O(W L C) instead of O(W^2 L C); it is
    computed in float32 (upstream: bf16 matmuls), so only values within rounding of ``tau`` can differ.
    Undefined for W = 1 (see ``static_mask``).
    """
    w = segment.shape[0]
    x = segment if segment.dtype == torch.float64 else segment.float()
    total = F.normalize(x, dim=-1).sum(dim=0)                                # (L, C)
    return ((total * total).sum(dim=-1) - w) / (w * (w - 1))


def static_mask(segment: torch.Tensor, tau: float) -> torch.Tensor:
    """(W, L, C) -> (L,) bool, True where the location is static (strictly ``> tau``).

    A one-frame segment has no temporal evidence: every location is dynamic (the official formula
    divides by zero there; with 16 frames it never happens).
    """
    if segment.shape[0] < 2:
        return torch.zeros(segment.shape[1], dtype=torch.bool, device=segment.device)
    return static_similarity(segment) > tau


def spatial_merge(tokens: torch.Tensor, cluster_ratio: float, k: int = 7,
                  generator: Optional[torch.Generator] = None, min_merge_size: int = 14):
    """(N, C) one group's tokens -> (merged (M, C), labels (N,) giving each input's output row).
    Batched over equally sized groups: (B, N, C) -> ((B, M, C), (B, N)).

    Groups of at most ``min_merge_size`` tokens pass through in their order (M = N). Larger groups are
    merged by DPC-KNN into ``max(1, int(N * cluster_ratio))`` cluster means in centre-score order.
    """
    n = tokens.shape[-2]
    if n <= min_merge_size:
        return tokens, torch.arange(n, device=tokens.device).expand(tokens.shape[:-1])
    n_clusters = max(1, int(n * cluster_ratio))
    labels = dpc_knn(tokens, n_clusters, k, generator)
    return cluster_means(tokens, labels, n_clusters), labels


@dataclass
class MergeResult:
    """Stage-1 output for one video.

    ``tokens`` (N, C): concatenation over segments of [static tokens, dynamic tokens of frame 1..W].
    ``window_sizes[i]`` = W_i, ``static_sizes[i]`` = S_i, ``dynamic_sizes[i]`` = W_i * D_i (official meaning).
    Provenance: ``assignment`` (T, L) gives, for every input token, the row of ``tokens`` it was merged into;
    ``raw_labels`` / ``frame_labels`` (T,) are the DPC-KNN and repaired segment labels;
    ``static_masks`` holds each segment's (L,) static mask.
    """

    tokens: torch.Tensor
    window_sizes: List[int]
    static_sizes: List[int]
    dynamic_sizes: List[int]
    assignment: torch.Tensor
    raw_labels: torch.Tensor
    frame_labels: torch.Tensor
    static_masks: List[torch.Tensor] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])

    def sources(self, row: int) -> torch.Tensor:
        """(n, 2) (frame, location) pairs of the input tokens merged into output row ``row``."""
        return (self.assignment == row).nonzero()


def merge_video_tokens(frames: torch.Tensor, *, tau: float, temporal_segment_ratio: float, cluster_ratio: float,
                       k: int = 7, generator: Optional[torch.Generator] = None,
                       min_merge_size: int = 14) -> MergeResult:
    """PruneVid stage 1 on one video.

    Args:
        frames: (T, L, C) visual tokens in LLM embedding space, frame-major, raster order inside a frame.
        tau, temporal_segment_ratio, cluster_ratio, k: the paper's hyperparameters (``PruneVidConfig``).
        generator: DPC-KNN tie-break noise source (every DPC-KNN call draws from it in a fixed order).
        min_merge_size: groups larger than this are merged spatially (14 in the official code).

    Returns:
        ``MergeResult`` with N = sum_i (S_i + W_i * D_i) tokens.
    """
    if frames.dim() != 3:
        raise ValueError(f"frames must have shape (T, L, C), got {tuple(frames.shape)}")
    t, l, _ = frames.shape
    raw, refined, windows = temporal_segments(frames, temporal_segment_ratio, k, generator)
    outputs, static_sizes, dynamic_sizes, masks = [], [], [], []
    assignment = torch.empty(t, l, dtype=torch.long, device=frames.device)
    offset, start = 0, 0
    for w in windows:
        seg = frames[start:start + w]                                       # (W, L, C)
        is_static = static_mask(seg, tau)
        masks.append(is_static)
        static_idx = is_static.nonzero().squeeze(1)                         # raster order
        dynamic_idx = (~is_static).nonzero().squeeze(1)

        # Static group: temporal mean, then spatial merge. Empty group -> contributes nothing.
        n_static = 0
        if static_idx.numel() > 0:
            static_tok = seg[:, static_idx].mean(dim=0)                     # (Ns, C)
            merged, lab = spatial_merge(static_tok, cluster_ratio, k, generator, min_merge_size)
            outputs.append(merged)
            assignment[start:start + w, static_idx] = offset + lab[None, :]
            n_static = merged.shape[0]
        offset += n_static

        # Dynamic group: per-frame spatial merge (all W frames at once), no temporal merging.
        n_dyn_per_frame = 0
        if dynamic_idx.numel() > 0:
            merged, lab = spatial_merge(seg[:, dynamic_idx], cluster_ratio, k, generator, min_merge_size)
            n_dyn_per_frame = merged.shape[1]                               # D, the same for every frame
            outputs.append(merged.reshape(-1, merged.shape[-1]))            # frame-major: (W * D, C)
            frame_offsets = offset + n_dyn_per_frame * torch.arange(w, device=frames.device)[:, None]
            assignment[start:start + w, dynamic_idx] = frame_offsets + lab
            offset += w * n_dyn_per_frame
        static_sizes.append(n_static)
        dynamic_sizes.append(w * n_dyn_per_frame)
        start += w
    tokens = torch.cat(outputs, dim=0) if outputs else frames.new_zeros(0, frames.shape[-1])
    return MergeResult(tokens=tokens, window_sizes=list(windows), static_sizes=static_sizes,
                       dynamic_sizes=dynamic_sizes, assignment=assignment, raw_labels=raw,
                       frame_labels=refined, static_masks=masks)
