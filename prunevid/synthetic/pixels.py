"""The pixels of the synthetic world: the frame format, the colour and scene palettes, shape masks, textured
backgrounds, painting a :class:`~prunevid.synthetic.world.Video` into frames, where an object lies in pixels and
in visual tokens, and writing frames to mp4.

Each video has 16 frames of 112 x 112 RGB. A model with 8 px patches sees 14 x 14 patches per frame, pooled by
LLaVA-OneVision to 7 x 7 = 49 visual tokens.

The mp4 files hold 17 frames at 8 fps (the last frame repeated): with 17 frames both the official
segment-midpoint sampler and lmms-eval's linspace sampler pick exactly the 16 generated frames, so what a
benchmark runner decodes is what was generated (up to lossy compression).

This module imports nothing from the rest of the package (``world.py`` imports it), so the tracks and videos it
paints (``world.Track``, ``world.Video``) are named in docstrings, not in annotations.
"""
from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

NUM_FRAMES = 16
FRAME_SIZE = 112
FPS = 8
FILE_FRAMES = NUM_FRAMES + 1          # see the module docstring: 17 frames make both samplers exact

COLORS = {"red": (222, 45, 40), "green": (50, 190, 60), "blue": (40, 85, 235), "yellow": (245, 215, 40),
          "purple": (165, 60, 215)}
SCENES = {"grass": (85, 125, 70), "sea": (60, 105, 145), "sand": (180, 160, 120), "snow": (210, 210, 215),
          "night": (38, 38, 60), "brick": (140, 80, 68)}


@lru_cache(maxsize=None)
def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean (size, size) mask of a square, circle or upward triangle."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    c = size / 2.0
    if shape == "square":
        m = np.ones((size, size), bool)
    elif shape == "circle":
        m = (xx - c) ** 2 + (yy - c) ** 2 <= c * c
    elif shape == "triangle":
        m = np.abs(xx - c) <= yy / 2.0
    else:
        raise ValueError(f"unknown shape {shape!r}")
    m.setflags(write=False)
    return m


def _resize_bilinear(a: np.ndarray, n: int) -> np.ndarray:
    """(h, w, c) -> (n, n, c), bilinear with half-pixel centres."""
    h, w = a.shape[:2]

    def axis(k):
        p = np.clip((np.arange(n) + 0.5) * k / n - 0.5, 0, k - 1)
        i0 = np.floor(p).astype(int)
        i1 = np.minimum(i0 + 1, k - 1)
        return i0, i1, (p - i0).astype(np.float32)

    y0, y1, wy = axis(h)
    x0, x1, wx = axis(w)
    rows = a[y0] * (1 - wy)[:, None, None] + a[y1] * wy[:, None, None]
    return rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]


def make_background(rng: np.random.Generator, scene: str, size: int = FRAME_SIZE) -> np.ndarray:
    """A static textured background: the scene's base colour, a low-frequency colour field, and a 4 px
    block texture (mostly luminance) -> (size, size, 3) float32."""
    base = np.asarray(SCENES[scene], np.float32)
    low = _resize_bilinear(rng.normal(0.0, 16.0, (4, 4, 3)).astype(np.float32), size)
    lum = rng.normal(0.0, 11.0, (size // 4, size // 4, 1)).astype(np.float32)
    tint = rng.normal(0.0, 3.0, (size // 4, size // 4, 3)).astype(np.float32)
    block = np.kron(lum + tint, np.ones((4, 4, 1), np.float32))
    return np.clip(base + low + block, 0, 255).astype(np.float32)


def render(video, size: int = FRAME_SIZE) -> np.ndarray:
    """Paint a ``world.Video``'s tracks over its backgrounds, add light per-frame sensor noise -> (T, H, W, 3)
    uint8."""
    T = len(video.scenes)
    out = np.empty((T, size, size, 3), np.float32)
    for t in range(T):
        out[t] = video.backgrounds[video.scenes[t]]
        for tr in video.tracks:
            if not tr.visible[t]:
                continue
            m = shape_mask(tr.shape, tr.size)
            x0 = int(round(tr.x[t] - tr.size / 2.0))
            y0 = int(round(tr.y[t] - tr.size / 2.0))
            xa, ya = max(x0, 0), max(y0, 0)
            xb, yb = min(x0 + tr.size, size), min(y0 + tr.size, size)
            if xa >= xb or ya >= yb:
                continue
            sub = m[ya - y0:yb - y0, xa - x0:xb - x0]
            rgb = np.clip(np.asarray(COLORS[tr.color[t]], np.float32) + tr.shade, 0, 255)
            out[t, ya:yb, xa:xb][sub] = rgb
    noise = np.random.default_rng(video.noise_seed).standard_normal(out.shape, dtype=np.float32) * 2.0
    return np.clip(np.rint(out + noise), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------
# Where an object is, in pixels and in visual tokens (ground truth for the tutorials' pictures and rates)
# ----------------------------------------------------------------------------------------------------------

def object_pixels(track, frame: int, size: int = FRAME_SIZE) -> np.ndarray:
    """(size, size) bool: the pixels ``render`` paints for ``track`` (a ``world.Track``) in ``frame`` (all False
    where it is hidden); the same placement and clipping as ``render``."""
    out = np.zeros((size, size), bool)
    if not track.visible[frame]:
        return out
    m = shape_mask(track.shape, track.size)
    x0 = int(round(track.x[frame] - track.size / 2.0))
    y0 = int(round(track.y[frame] - track.size / 2.0))
    xa, ya = max(x0, 0), max(y0, 0)
    xb, yb = min(x0 + track.size, size), min(y0 + track.size, size)
    if xa < xb and ya < yb:
        out[ya:yb, xa:xb] = m[ya - y0:yb - y0, xa - x0:xb - x0]
    return out


def token_coverage(track, grid: int, size: int = FRAME_SIZE) -> np.ndarray:
    """(T, grid * grid) float in [0, 1]: the share of each visual token's cell that ``track`` covers, per frame.

    A frame's tokens are a ``grid`` x ``grid`` raster (49 = 7 x 7 for the demo model: 112 px frames, 16 px cells
    after LLaVA-OneVision's 2 x 2 pooling); pixel row ``y`` belongs to cell row ``floor(y * grid / size)`` (the same
    for columns), so a grid that does not divide ``size`` gets cells of unequal pixel counts."""
    cell = (np.arange(size) * grid) // size                          # pixel -> cell index along one axis
    flat = (cell[:, None] * grid + cell[None, :]).reshape(-1)        # (size * size,) cell of every pixel
    area = np.bincount(flat, minlength=grid * grid).astype(np.float64)
    out = np.zeros((len(track.visible), grid * grid))
    for t in range(len(track.visible)):
        out[t] = np.bincount(flat, weights=object_pixels(track, t, size).reshape(-1), minlength=grid * grid) / area
    return out


def write_mp4(path: str, frames: np.ndarray, *, fps: int = FPS, codec: str = "libx264") -> None:
    """Write (T, H, W, 3) uint8 frames to ``path`` plus one repeated last frame (FILE_FRAMES in all)."""
    import av
    frames = np.concatenate([frames, frames[-1:]], axis=0) if len(frames) == NUM_FRAMES else frames
    tmp = path + ".part"
    with av.open(tmp, "w", format="mp4") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height = frames.shape[2], frames.shape[1]
        s.pix_fmt = "yuv420p"
        s.codec_context.thread_count = 1
        if codec == "libx264":
            s.options = {"crf": "10", "preset": "veryfast"}
        else:
            s.bit_rate = 4_000_000
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    os.replace(tmp, path)

