"""Drawing PruneVid on the frames, from the provenance stage 1 records (``MergeResult.assignment``).

All functions take frames as (T, H, W, 3) uint8 and a token grid side ``grid`` (tokens per frame = grid^2,
raster order), and return a matplotlib ``Figure``. Notebooks and reports call these; they hold no algorithm.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch


def _plt():
    import matplotlib.pyplot as plt      # headless: matplotlib falls back to Agg by itself
    return plt


def _segment_of_frame(window_sizes: Sequence[int]) -> list:
    out = []
    for i, w in enumerate(window_sizes):
        out += [i] * int(w)
    return out


def _grid_image(values: np.ndarray, grid: int) -> np.ndarray:
    return values.reshape(grid, grid)


def _frame_axes(plt, n: int, per_row: int = 8, size: float = 1.6, extra_height: float = 0.3, aspect: float = 1.0):
    """``aspect`` = frame height / width: rows as tall as the frames (wide frames leave no blank bands)."""
    rows = (n + per_row - 1) // per_row
    cols = min(n, per_row)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, (size * aspect + extra_height) * rows), squeeze=False)
    flat = axes.flatten()
    for ax in flat[n:]:
        ax.axis("off")
    for ax in flat[:n]:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, flat[:n]


def frame_strip(frames: torch.Tensor, window_sizes: Optional[Sequence[int]] = None, title: str = "", per_row: int = 8,
                size: float = 1.6):
    """Frames in rows of ``per_row`` (reading order), each ``size`` inches wide, framed in one colour per
    temporal segment."""
    plt = _plt()
    t = frames.shape[0]
    seg = _segment_of_frame(window_sizes) if window_sizes is not None else [0] * t
    cmap = plt.get_cmap("tab10")
    fig, axes = _frame_axes(plt, t, per_row, size=size, extra_height=0.5, aspect=frames.shape[1] / frames.shape[2])
    for i, ax in enumerate(axes):
        ax.imshow(frames[i].cpu().numpy())
        for spine in ax.spines.values():
            spine.set_edgecolor(cmap(seg[i] % 10))
            spine.set_linewidth(4 if window_sizes is not None else 0.5)
        ax.set_title(f"frame {i}" + (f" | seg {seg[i]}" if window_sizes is not None else ""), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def decision_graph(density: torch.Tensor, delta: torch.Tensor, centers: Optional[Sequence[int]] = None,
                   labels: Optional[Sequence] = None, title: str = "DPC-KNN decision graph"):
    """Scatter of density rho against distance-to-denser delta; centres (largest rho x delta) circled."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 3.4))
    rho, dl = density.cpu().numpy(), delta.cpu().numpy()
    ax.scatter(rho, dl, s=18, c="tab:blue")
    if centers is not None:
        c = list(int(i) for i in centers)
        ax.scatter(rho[c], dl[c], s=120, facecolors="none", edgecolors="tab:red", linewidths=2, label="centres")
        ax.legend(fontsize=7)
    for i in range(len(rho)):
        ax.annotate(str(labels[i]) if labels is not None else str(i), (rho[i], dl[i]), fontsize=6,
                    xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel("density rho")
    ax.set_ylabel("distance to denser token delta")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def _overlay(ax, frame: np.ndarray, grid_values: np.ndarray, cmap: str, alpha: float, vmin=None, vmax=None):
    h, w = frame.shape[:2]
    ax.imshow(frame)
    ax.imshow(grid_values, cmap=cmap, alpha=alpha, extent=(0, w, h, 0), vmin=vmin, vmax=vmax, interpolation="nearest")


def static_maps(frames: torch.Tensor, merged, grid: int, title: str = "static locations per segment (red)"):
    """Each segment's first frame with its static locations in red."""
    plt = _plt()
    n = len(merged.window_sizes)
    fig, axes = _frame_axes(plt, n, per_row=6, size=2.2)
    start = 0
    for i, ax in enumerate(axes):
        mask = merged.static_masks[i].float().cpu().numpy()
        _overlay(ax, frames[start].cpu().numpy(), _grid_image(mask, grid), "Reds", 0.45, 0, 1)
        ax.set_title(f"seg {i} ({merged.window_sizes[i]} fr): {int(mask.sum())}/{grid * grid} static", fontsize=7)
        start += merged.window_sizes[i]
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def cluster_maps(frames: torch.Tensor, merged, grid: int, frame_ids: Optional[Sequence[int]] = None,
                 title: str = "which output token each location went to"):
    """Per frame, every location coloured by the output token it was merged into (same colour = merged)."""
    plt = _plt()
    frame_ids = list(range(frames.shape[0])) if frame_ids is None else list(frame_ids)
    fig, axes = _frame_axes(plt, len(frame_ids), per_row=6, size=2.2)
    rng = np.random.default_rng(0)
    palette = rng.permutation(max(merged.num_tokens, 1))        # neighbouring ids get distant colours
    for ax, f in zip(axes, frame_ids):
        rows = merged.assignment[f].cpu().numpy()
        _overlay(ax, frames[f].cpu().numpy(), _grid_image(palette[rows] % 20, grid), "tab20", 0.6, 0, 19)
        ax.set_title(f"frame {f}: {len(set(rows.tolist()))} tokens", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def token_value_maps(frames: torch.Tensor, merged, grid: int, values: torch.Tensor, frame_ids=None,
                     title: str = "stage-2 score of the token each location feeds", cmap: str = "viridis"):
    """Draw a per-output-token value (e.g. the stage-2 score, or kept = 1) at every input location."""
    plt = _plt()
    frame_ids = list(range(frames.shape[0])) if frame_ids is None else list(frame_ids)
    vals = values.float().cpu().numpy()
    fig, axes = _frame_axes(plt, len(frame_ids), per_row=6, size=2.2)
    vmin, vmax = float(vals.min()), float(vals.max())
    for ax, f in zip(axes, frame_ids):
        rows = merged.assignment[f].cpu().numpy()
        _overlay(ax, frames[f].cpu().numpy(), _grid_image(vals[rows], grid), cmap, 0.6, vmin, vmax)
        ax.set_title(f"frame {f}", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def kept_maps(frames: torch.Tensor, merged, grid: int, kept_rows: torch.Tensor, frame_ids=None,
              title: str = "locations whose merged token survives stage 2"):
    """Locations whose output token is among ``kept_rows`` (indices into ``merged.tokens``), others dimmed."""
    keep = torch.zeros(merged.num_tokens)
    keep[kept_rows.cpu()] = 1.0
    return token_value_maps(frames, merged, grid, keep, frame_ids, title=title, cmap="gray")


def outline_cells(ax, cells, grid: int, frame_shape, colour: str = "red", linewidth: float = 1.2):
    """Outline the token cells where ``cells`` ((grid * grid,) bool, raster order) is True on an axes that shows a
    frame of ``frame_shape`` ((H, W, ...)) in pixel coordinates, as every drawing here does: e.g. the ground-truth
    cells of a synthetic object (``prunevid.synthetic.token_coverage``)."""
    from matplotlib.patches import Rectangle
    h, w = frame_shape[:2]
    ch, cw = h / grid, w / grid
    for c in np.flatnonzero(np.asarray(cells).reshape(-1)):
        r, col = divmod(int(c), grid)
        ax.add_patch(Rectangle((col * cw, r * ch), cw, ch, fill=False, edgecolor=colour, linewidth=linewidth))
