"""PruneVid stage 2: attention-guided token selection inside the LLM, as pure tensor functions.

The official rule (``prunevid-method.md`` §2): at decoder layer K, take that layer's own query/key projections
of its layer-normed input, *before* RoPE, compute softmax(q k^T / sqrt(d)) with *no* mask (every row normalised
over all N tokens), reduce by max over heads and then max over every token after the video, and keep
``floor(alpha * n)`` tokens per group (each segment's static group, each frame's dynamic group).

Only the query rows after the video are ever formed here: (heads, R, N) logits, never N x N.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Standard (Llama/Qwen2) rotary embedding: x (H, n, d), cos/sin (n, d)."""
    return x * cos[None] + rotate_half(x) * sin[None]


def visual_token_scores(query: torch.Tensor, key: torch.Tensor, visual: slice, *, scaling: float,
                        query_positions: Optional[torch.Tensor] = None, reduce: str = "max",
                        out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Score every visual token by the attention the post-video text pays it.

    Args:
        query: (H, R, d) query rows (the tokens after the video), one head per row of H.
        key: (H, N, d) keys of the whole sequence (key/value heads already repeated to H).
        visual: slice of the visual columns in 0..N-1.
        scaling: 1/sqrt(d) (the layer's own).
        query_positions: (R,) sequence indices of the query rows; given, row r is normalised over keys
            0..query_positions[r] only (causal). ``None`` = the official unmasked softmax over all N keys.
        reduce: ``"max"`` (official: max over heads, then over rows) or ``"mean"``.
        out_dtype: dtype the probabilities are cast to before reducing (the official code casts the float32
            softmax to the model dtype, which decides ties); ``None`` keeps float32.

    Returns:
        (N_visual,) float scores.
    """
    logits = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scaling   # (H, R, N)
    if query_positions is not None:
        cols = torch.arange(key.shape[-2], device=key.device)
        logits = logits.masked_fill(cols[None, None, :] > query_positions[None, :, None], float("-inf"))
    probs = logits.softmax(dim=-1)
    if out_dtype is not None:
        probs = probs.to(out_dtype)
    probs = probs[..., visual]                                                      # (H, R, Nv)
    if reduce == "max":
        return probs.amax(dim=0).amax(dim=0)
    if reduce == "mean":
        return probs.float().mean(dim=(0, 1))
    raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")


def select_tokens(scores: torch.Tensor, static_sizes: Sequence[int], dynamic_sizes: Sequence[int],
                  window_sizes: Sequence[int], alpha: float) -> torch.Tensor:
    """Keep the top ``floor(alpha * n)`` tokens of every group.

    Args:
        scores: (N,) one score per stage-1 visual token, laid out as ``merge_video_tokens`` orders them.
        static_sizes, dynamic_sizes, window_sizes: per segment S_i, W_i * D_i, W_i.
        alpha: keep fraction in (0, 1].

    Returns:
        (K,) long, sorted ascending, indices into ``scores``;
        K = sum_i floor(alpha * S_i) + W_i * floor(alpha * D_i). Empty groups contribute nothing (the
        official ``.view(W, -1)`` on an empty block is ambiguous; here it is simply skipped).
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    if not len(static_sizes) == len(dynamic_sizes) == len(window_sizes):
        raise ValueError("static_sizes, dynamic_sizes and window_sizes must have one entry per segment")
    total = sum(static_sizes) + sum(dynamic_sizes)
    if scores.dim() != 1 or scores.numel() != total:
        raise ValueError(f"scores must have shape ({total},) for these group sizes, got {tuple(scores.shape)}")
    keep = []
    start = 0
    for s, dblk, w in zip(static_sizes, dynamic_sizes, window_sizes):
        if w <= 0 or dblk % w:
            raise ValueError(f"dynamic size {dblk} is not a multiple of the window size {w}")
        if s > 0:
            n = int(s * alpha)
            if n > 0:
                keep.append(start + scores[start:start + s].topk(n).indices)
        d = dblk // w
        if d > 0:
            n = int(d * alpha)
            if n > 0:
                per_frame = scores[start + s:start + s + dblk].view(w, d)                 # one row per frame
                top = per_frame.topk(n, dim=1).indices                                    # (W, n)
                base = start + s + torch.arange(w, device=scores.device)[:, None] * d
                keep.append((base + top).flatten())
        start += s + dblk
    if not keep:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    return torch.cat(keep).sort().values


def kept_count(static_sizes: Sequence[int], dynamic_sizes: Sequence[int], window_sizes: Sequence[int],
               alpha: float) -> int:
    """Number of tokens ``select_tokens`` keeps: sum_i floor(alpha S_i) + W_i floor(alpha D_i)."""
    return sum(int(s * alpha) + w * int((d // w) * alpha) for s, d, w in zip(static_sizes, dynamic_sizes, window_sizes))


# ----------------------------------------------------------------------------------------------------------
# Shared helpers for the other methods (FastV, Look-M, the SigLIP importance of VisionZip / PruMerge)
# ----------------------------------------------------------------------------------------------------------
def attention_column_sums(query: torch.Tensor, key: torch.Tensor, *, scaling: float,
                          query_positions: Optional[torch.Tensor] = None, block: int = 256) -> torch.Tensor:
    """Attention each key receives, summed over the query rows: (H, R, d) x (H, N, d) -> (H, N) float32.

    Rows are processed ``block`` at a time, so memory stays O(H x block x N), never O(H x R x N).
    ``query_positions`` (R,) makes row r causal (keys 0..query_positions[r] only); ``None`` = unmasked.
    """
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    h, r, _ = query.shape
    n = key.shape[-2]
    kf = key.float().transpose(-1, -2)
    out = torch.zeros(h, n, dtype=torch.float32, device=query.device)
    cols = torch.arange(n, device=query.device)
    for start in range(0, r, block):
        stop = min(start + block, r)
        logits = torch.matmul(query[:, start:stop].float(), kf) * scaling                # (H, b, N)
        if query_positions is not None:
            pos = query_positions[start:stop].to(query.device)
            logits = logits.masked_fill(cols[None, None, :] > pos[None, :, None], float("-inf"))
        out += logits.softmax(dim=-1).sum(dim=1)
    return out


def top_k_sorted(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the ``n`` largest scores, in ascending index order (``n`` clamped to [0, len])."""
    n = max(0, min(int(n), scores.numel()))
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    return scores.topk(n).indices.sort().values


def bottom_k_sorted(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the ``n`` smallest scores, in ascending index order."""
    return top_k_sorted(-scores, n)


def count_for_ratio(ratio: float, n: int) -> int:
    """``floor(ratio * n)`` robust to float error (0.25 * 196 = 49 exactly, 0.3 * 10 = 3 not 2)."""
    return int(math.floor(ratio * n + 1e-9))
