"""What happens in a synthetic video: the world's vocabulary (colour, shape and scene names, directions), the task
list with its option counts and chance levels, object tracks, the video description, object placement, and the
video maker of each task.

A video is a textured static background ("scene") and a few coloured shapes that move, appear, disappear and
change colour; some videos cut from one scene to another. Every draw comes from the ``rng`` it is given, in a
fixed order that the recorded split checksums depend on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

from .pixels import COLORS, FRAME_SIZE, NUM_FRAMES, SCENES, make_background, render

# Recorded in meta.json: ensure_split regenerates a split written by another version of the generator.
GENERATOR_VERSION = 1

COLOR_NAMES = tuple(COLORS)
SHAPES = ("square", "circle", "triangle")
SCENE_NAMES = tuple(SCENES)
DIRECTIONS = ("left", "right", "up", "down")

TASKS = ("moving_direction", "moving_attribute", "object_count", "appearance_order", "state_change",
         "scene_transition", "object_existence")
NUM_OPTIONS = {"moving_direction": 4, "moving_attribute": 4, "object_count": 4, "appearance_order": 3,
               "state_change": 5, "scene_transition": 3, "object_existence": 2}
CHANCE = {t: 1.0 / n for t, n in NUM_OPTIONS.items()}


# ----------------------------------------------------------------------------------------------------------
# Scene description: tracks and videos (pixels in pixels.py)
# ----------------------------------------------------------------------------------------------------------

@dataclass
class Track:
    """One object: per-frame centre, colour name and visibility (arrays of length NUM_FRAMES)."""

    shape: str
    size: int
    x: np.ndarray
    y: np.ndarray
    color: List[str]
    visible: np.ndarray
    shade: int = 0                       # per-object brightness jitter, kept through colour changes

    @property
    def moving(self) -> bool:
        v = np.flatnonzero(self.visible)
        return bool(np.any(self.x[v] != self.x[v[0]]) or np.any(self.y[v] != self.y[v[0]]))

    @property
    def direction(self) -> Optional[str]:
        """The direction of travel over the visible frames (the dominant axis), None when static."""
        if not self.moving:
            return None
        v = np.flatnonzero(self.visible)
        dx, dy = self.x[v[-1]] - self.x[v[0]], self.y[v[-1]] - self.y[v[0]]
        if abs(dx) >= abs(dy):
            return "right" if dx > 0 else "left"
        return "down" if dy > 0 else "up"

    @property
    def first_frame(self) -> int:
        return int(np.flatnonzero(self.visible)[0])

    @property
    def last_frame(self) -> int:
        return int(np.flatnonzero(self.visible)[-1])

    @property
    def first_color(self) -> str:
        return self.color[self.first_frame]

    @property
    def last_color(self) -> str:
        return self.color[self.last_frame]

    @property
    def name(self) -> str:
        return f"{self.first_color} {self.shape}"


@dataclass
class Video:
    """A generated video before rendering: per-frame scene names, background textures, object tracks."""

    scenes: List[str]                    # scene name per frame
    backgrounds: Dict[str, np.ndarray]   # scene name -> (H, W, 3) float32 texture
    tracks: List[Track]
    noise_seed: int
    _frames: Optional[np.ndarray] = field(default=None, repr=False)

    @property
    def scene_change(self) -> Optional[int]:
        """First frame of the second scene, None without a cut."""
        for t in range(1, len(self.scenes)):
            if self.scenes[t] != self.scenes[t - 1]:
                return t
        return None

    @property
    def frames(self) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB, rendered once."""
        if self._frames is None:
            self._frames = render(self)
        return self._frames


# ----------------------------------------------------------------------------------------------------------
# Object placement
# ----------------------------------------------------------------------------------------------------------

def _clear(a: Track, b: Track, gap: float = 3.0) -> bool:
    both = a.visible & b.visible
    if not both.any():
        return True
    need = (a.size + b.size) / 2.0 + gap
    d = np.maximum(np.abs(a.x - b.x), np.abs(a.y - b.y))[both]
    return bool(d.min() > need)


def _new_track(rng: np.random.Generator, *, color: str, shape: str, moving: Optional[str] = None,
               visible: Optional[np.ndarray] = None, size: Optional[int] = None,
               speed_range: tuple = (2.0, 3.0)) -> Track:
    """A static or straight-moving object; ``speed_range`` (px per frame) is version 1's unless given (version 2
    moves faster so the direction shows over 16 frames); the draw order is the same either way."""
    T, S = NUM_FRAMES, FRAME_SIZE
    size = int(size if size is not None else rng.integers(16, 25))
    margin = size / 2.0 + 2
    t = np.arange(T, dtype=np.float32)
    if moving is None:
        x = np.full(T, rng.uniform(margin, S - margin), np.float32)
        y = np.full(T, rng.uniform(margin, S - margin), np.float32)
    else:
        speed = rng.uniform(*speed_range)
        travel = speed * (T - 1)
        along0 = rng.uniform(margin, S - margin - travel)       # start on the travel axis (increasing)
        across = rng.uniform(margin, S - margin)
        pos = along0 + speed * t
        if moving in ("left", "up"):
            pos = (S - pos).astype(np.float32)                     # mirror: decreasing coordinate
        if moving in ("left", "right"):
            x, y = pos.astype(np.float32), np.full(T, across, np.float32)
        else:
            x, y = np.full(T, across, np.float32), pos.astype(np.float32)
    x, y = np.round(x), np.round(y)
    vis = np.ones(T, bool) if visible is None else visible.astype(bool)
    shade = int(rng.integers(-12, 13))
    return Track(shape=shape, size=size, x=x, y=y, color=[color] * T, visible=vis, shade=shade)


class _PlacementError(RuntimeError):
    """A drawn layout left no room for the next object; the item's video is drawn again."""


def _add(rng: np.random.Generator, tracks: List[Track], make: Callable[[], Track], tries: int = 200) -> Track:
    """Draw tracks from ``make`` until one overlaps none of ``tracks``; append and return it."""
    for _ in range(tries):
        tr = make()
        if all(_clear(tr, o) for o in tracks):
            tracks.append(tr)
            return tr
    raise _PlacementError("could not place an object without overlap")


def _scene_video(rng: np.random.Generator, tracks: List[Track], scenes: Optional[List[str]] = None) -> Video:
    if scenes is None:
        scenes = [SCENE_NAMES[rng.integers(len(SCENE_NAMES))]] * NUM_FRAMES
    backgrounds = {s: make_background(rng, s) for s in dict.fromkeys(scenes)}
    return Video(scenes=scenes, backgrounds=backgrounds, tracks=tracks, noise_seed=int(rng.integers(2 ** 31)))


def _n_distractors(rng: np.random.Generator, difficulty: float, most: int) -> int:
    """0..most distractors; ``difficulty`` in [0, 1] scales the upper end (curriculum: 0 = none)."""
    hi = int(round(most * min(max(difficulty, 0.0), 1.0)))
    return int(rng.integers(0, hi + 1))


def _pick(rng: np.random.Generator, seq, k: int = 1, exclude=()) -> list:
    pool = [s for s in seq if s not in exclude]
    idx = rng.choice(len(pool), size=k, replace=False)
    return [pool[i] for i in idx]


# ----------------------------------------------------------------------------------------------------------
# Videos designed for each task
# ----------------------------------------------------------------------------------------------------------

def _video_moving_direction(rng, difficulty):
    color, = _pick(rng, COLOR_NAMES)
    shape, = _pick(rng, SHAPES)
    direction, = _pick(rng, DIRECTIONS)
    tracks: List[Track] = []
    _add(rng, tracks, lambda: _new_track(rng, color=color, shape=shape, moving=direction))
    for _ in range(_n_distractors(rng, difficulty, 2)):
        c, = _pick(rng, COLOR_NAMES, exclude=(color,))
        s, = _pick(rng, SHAPES)
        _add(rng, tracks, lambda: _new_track(rng, color=c, shape=s))
    return _scene_video(rng, tracks)


def _video_moving_attribute(rng, difficulty):
    n = 1 + max(1, _n_distractors(rng, difficulty, 2)) if difficulty > 0 else 1
    colors = _pick(rng, COLOR_NAMES, k=n)
    tracks: List[Track] = []
    direction, = _pick(rng, DIRECTIONS)
    for i, c in enumerate(colors):
        s, = _pick(rng, SHAPES)
        _add(rng, tracks, lambda: _new_track(rng, color=c, shape=s, moving=direction if i == 0 else None))
    return _scene_video(rng, tracks)


def _video_object_count(rng, difficulty):
    hi = 1 + int(round(3 * min(max(difficulty, 0.0), 1.0)))
    n = int(rng.integers(1, hi + 1))
    tracks: List[Track] = []
    for _ in range(n):
        c, = _pick(rng, COLOR_NAMES)
        s, = _pick(rng, SHAPES)
        moving = _pick(rng, DIRECTIONS)[0] if rng.random() < 0.25 else None
        _add(rng, tracks, lambda: _new_track(rng, color=c, shape=s, moving=moving))
    return _scene_video(rng, tracks)


def _video_appearance_order(rng, difficulty):
    n = 3 if difficulty >= 0.5 else 2
    colors = _pick(rng, COLOR_NAMES, k=n)
    starts = [int(rng.integers(0, 4))]
    for _ in range(n - 1):
        starts.append(int(rng.integers(starts[-1] + 3, min(starts[-1] + 7, NUM_FRAMES - 3 * (n - len(starts))) + 1)))
    order = rng.permutation(n)
    tracks: List[Track] = []
    for i, c in zip(order, colors):
        s, = _pick(rng, SHAPES)
        vis = np.arange(NUM_FRAMES) >= starts[i]
        _add(rng, tracks, lambda: _new_track(rng, color=c, shape=s, visible=vis))
    return _scene_video(rng, tracks)


def _video_state_change(rng, difficulty):
    shapes = _pick(rng, SHAPES, k=1 + _n_distractors(rng, difficulty, 2))
    old, new = _pick(rng, COLOR_NAMES, k=2)
    k = int(rng.integers(4, 12))
    tracks: List[Track] = []
    tr = _add(rng, tracks, lambda: _new_track(rng, color=old, shape=shapes[0]))
    tr.color = [old] * k + [new] * (NUM_FRAMES - k)
    for s in shapes[1:]:
        c, = _pick(rng, COLOR_NAMES)
        _add(rng, tracks, lambda: _new_track(rng, color=c, shape=s))
    return _scene_video(rng, tracks)


def _video_scene_transition(rng, difficulty):
    a, b = _pick(rng, SCENE_NAMES, k=2)
    k = int(rng.integers(4, 13))
    tracks: List[Track] = []
    for _ in range(_n_distractors(rng, difficulty, 2)):
        c, = _pick(rng, COLOR_NAMES)
        s, = _pick(rng, SHAPES)
        _add(rng, tracks, lambda: _new_track(rng, color=c, shape=s))
    return _scene_video(rng, tracks, scenes=[a] * k + [b] * (NUM_FRAMES - k))


def _video_object_existence(rng, difficulty):
    n = 1 + _n_distractors(rng, difficulty, 2)
    pairs = []
    while len(pairs) < n:
        p = (_pick(rng, COLOR_NAMES)[0], _pick(rng, SHAPES)[0])
        if p not in pairs:
            pairs.append(p)
    tracks: List[Track] = []
    for c, s in pairs:
        vis = None
        if difficulty > 0 and rng.random() < 0.4:              # present only for part of the video
            a = int(rng.integers(0, 8))
            b = int(rng.integers(a + 5, NUM_FRAMES + 1))
            vis = (np.arange(NUM_FRAMES) >= a) & (np.arange(NUM_FRAMES) < b)
        _add(rng, tracks, lambda: _new_track(rng, color=c, shape=s, visible=vis))
    return _scene_video(rng, tracks)


VIDEO_MAKERS = {"moving_direction": _video_moving_direction, "moving_attribute": _video_moving_attribute,
                "object_count": _video_object_count, "appearance_order": _video_appearance_order,
                "state_change": _video_state_change, "scene_transition": _video_scene_transition,
                "object_existence": _video_object_existence}

