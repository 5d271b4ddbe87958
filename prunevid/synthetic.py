"""A synthetic video-QA benchmark in MVBench's format, generated deterministically from a seed.

Each video has 16 frames of 112 x 112 RGB: a textured static background ("scene") and a few coloured shapes
that move, appear, disappear and change colour; some videos cut from one scene to another. A model with
8 px patches sees 14 x 14 patches per frame, pooled by LLaVA-OneVision to 7 x 7 = 49 visual tokens.

Seven task types modelled on MVBench, multiple choice with 2 to 5 options:

=================== ========================================================== ======= ======
task                question                                                    options chance
=================== ========================================================== ======= ======
moving_direction    Which direction does the {colour} {shape} move?            4       1/4
moving_attribute    What colour is the moving object?                          4       1/4
object_count        How many objects are in the video?                         4       1/4
appearance_order    What colour is the object that appears first / last?       3       1/3
state_change        What colour does the {shape} turn into?                    5       1/5
scene_transition    How does the scene change?                                 3       1/3
object_existence    Is there a {colour} {shape} in the video?                  2       1/2
=================== ========================================================== ======= ======

Splits are written in the official MVBench layout (``prunevid-method.md`` §5.3, ``external-formats.md`` §2.1)::

    DATAS/Synthetic/json/<task>.json        [{"video", "question", "candidates", "answer"}, ...]
    DATAS/Synthetic/video/<task>/<task>_0000.mp4
    DATAS/Synthetic/meta.json               seed, counts, per-task prefix and chance, checksum

(``--split train`` writes ``DATAS/Synthetic/train/...`` with the same structure.) Every item is generated
from its own random stream ``SeedSequence([seed, task_index, item_index])``, so a split is reproducible
item by item; ``meta.json``'s checksum covers the JSON items and the raw (pre-encoding) frames.

The mp4 files hold 17 frames at 8 fps (the last frame repeated): with 17 frames both the official
segment-midpoint sampler and lmms-eval's linspace sampler pick exactly the 16 generated frames, so what a
benchmark runner decodes is what was generated (up to lossy compression).

For training, :func:`sample` draws items in memory with the same generator (no mp4), optionally with
a curriculum (``difficulty``, ``shuffle``) and every valid question about the same video
(:func:`all_questions`) plus a dense caption (:func:`describe`).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Dict, List, Optional

import numpy as np

from .benchmarks import base as _bench_base

GENERATOR_VERSION = 1
NUM_FRAMES = 16
FRAME_SIZE = 112
FPS = 8
FILE_FRAMES = NUM_FRAMES + 1          # see the module docstring: 17 frames make both samplers exact
BENCHMARK_DIR = "Synthetic"
SPLIT_SEEDS = {"test": 20261124, "val": 777, "train": 1}
DEFAULT_N_PER_TASK = {"test": 50, "val": 50, "train": 500}

COLORS = {"red": (222, 45, 40), "green": (50, 190, 60), "blue": (40, 85, 235), "yellow": (245, 215, 40),
          "purple": (165, 60, 215)}
COLOR_NAMES = tuple(COLORS)
SHAPES = ("square", "circle", "triangle")
SCENES = {"grass": (85, 125, 70), "sea": (60, 105, 145), "sand": (180, 160, 120), "snow": (210, 210, 215),
          "night": (38, 38, 60), "brick": (140, 80, 68)}
SCENE_NAMES = tuple(SCENES)
DIRECTIONS = ("left", "right", "up", "down")
NUMBERS = ("one", "two", "three", "four")
YES_NO = ("yes", "no")

TASKS = ("moving_direction", "moving_attribute", "object_count", "appearance_order", "state_change",
         "scene_transition", "object_existence")
NUM_OPTIONS = {"moving_direction": 4, "moving_attribute": 4, "object_count": 4, "appearance_order": 3,
               "state_change": 5, "scene_transition": 3, "object_existence": 2}
CHANCE = {t: 1.0 / n for t, n in NUM_OPTIONS.items()}

# The synthetic benchmark's prompt, frozen: the demo model was trained on this text, an earlier reading of the
# official MVBench prompt. The official text (``benchmarks.mvbench.SYSTEM`` + ``official_user_query``) has a
# newline after the system text and a space before the post prompt; changing the synthetic prompt would change
# what the shipped model was trained on, so it keeps its own name and stays as it is.
SYNTHETIC_SYSTEM = ("Carefully watch the video and pay attention to the cause and sequence of events, the detail and "
                    "movement of objects, and the action and pose of persons. Based on your observations, select the "
                    "best option that accurately addresses the question.")
SYNTHETIC_POST_PROMPT = "\nOnly give the best option."
SYNTHETIC_ANSWER_PREFIX = _bench_base.OFFICIAL_ANSWER_PREFIX
OPTION_LETTERS = "ABCDEFG"


def synthetic_question(question: str, candidates: List[str]) -> str:
    """The official ``qa_template`` (right-stripped) with the post prompt appended directly (no space): the
    frozen user text of the synthetic benchmark."""
    return _bench_base.official_question_block(question, candidates) + SYNTHETIC_POST_PROMPT


def mvbench_answer(candidates: List[str], answer: str) -> str:
    """The ground-truth string ``"(B) red"`` of the official scorer."""
    return f"({OPTION_LETTERS[candidates.index(answer)]}) {answer}"


# ----------------------------------------------------------------------------------------------------------
# Scene description: tracks and rendering
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


def render(video: Video, size: int = FRAME_SIZE) -> np.ndarray:
    """Paint the tracks over the backgrounds, add light per-frame sensor noise -> (T, H, W, 3) uint8."""
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
               visible: Optional[np.ndarray] = None, size: Optional[int] = None) -> Track:
    T, S = NUM_FRAMES, FRAME_SIZE
    size = int(size if size is not None else rng.integers(16, 25))
    margin = size / 2.0 + 2
    t = np.arange(T, dtype=np.float32)
    if moving is None:
        x = np.full(T, rng.uniform(margin, S - margin), np.float32)
        y = np.full(T, rng.uniform(margin, S - margin), np.float32)
    else:
        speed = rng.uniform(2.0, 3.0)
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


# ----------------------------------------------------------------------------------------------------------
# Questions (each is defined on any video where it is unambiguous; None elsewhere)
# ----------------------------------------------------------------------------------------------------------

def _options(rng, answer: str, distractors: List[str], n: int, canonical: tuple, shuffle: bool) -> List[str]:
    cands = [answer] + [d for d in dict.fromkeys(distractors) if d != answer]
    if len(cands) > n:
        cands = [answer] + [cands[1 + i] for i in sorted(rng.choice(len(cands) - 1, n - 1, replace=False))]
    if len(cands) < n:
        cands += _pick(rng, canonical, k=n - len(cands), exclude=cands)
    if shuffle:
        return [cands[i] for i in rng.permutation(n)]
    order = {c: i for i, c in enumerate(canonical)}
    return sorted(cands, key=lambda c: order.get(c, len(order)))


def _unique_by(tracks: List[Track], key) -> List[Track]:
    keys = [key(t) for t in tracks]
    return [t for t, k in zip(tracks, keys) if keys.count(k) == 1]


def _q_moving_direction(video, rng, shuffle):
    movers = [t for t in _unique_by(video.tracks, lambda t: t.name) if t.moving]
    if not movers:
        return None
    tr = movers[int(rng.integers(len(movers)))]
    return {"question": f"Which direction does the {tr.name} move?",
            "candidates": _options(rng, tr.direction, list(DIRECTIONS), 4, DIRECTIONS, shuffle),
            "answer": tr.direction}


def _q_moving_attribute(video, rng, shuffle):
    movers = [t for t in video.tracks if t.moving]
    if len(movers) != 1 or len(set(movers[0].color)) != 1:
        return None
    if len({t.first_color for t in video.tracks}) != len(video.tracks):
        return None
    ans = movers[0].first_color
    others = [t.first_color for t in video.tracks if t is not movers[0]]
    return {"question": "What colour is the moving object?",
            "candidates": _options(rng, ans, others, 4, COLOR_NAMES, shuffle), "answer": ans}


def _q_object_count(video, rng, shuffle):
    n = len(video.tracks)
    if not 1 <= n <= len(NUMBERS):
        return None
    return {"question": "How many objects are in the video?",
            "candidates": _options(rng, NUMBERS[n - 1], list(NUMBERS), 4, NUMBERS, shuffle),
            "answer": NUMBERS[n - 1]}


def _q_appearance_order(video, rng, shuffle):
    tracks = video.tracks
    if len(tracks) < 2 or len({t.first_color for t in tracks}) != len(tracks):
        return None
    starts = sorted(t.first_frame for t in tracks)
    if len(set(starts)) != len(starts):
        return None
    which = "first" if rng.random() < 0.5 else "last"
    tr = min(tracks, key=lambda t: t.first_frame) if which == "first" else max(tracks, key=lambda t: t.first_frame)
    others = [t.first_color for t in tracks if t is not tr]
    return {"question": f"What colour is the object that appears {which}?",
            "candidates": _options(rng, tr.first_color, others, 3, COLOR_NAMES, shuffle), "answer": tr.first_color}


def _q_state_change(video, rng, shuffle):
    changers = [t for t in _unique_by(video.tracks, lambda t: t.shape) if t.first_color != t.last_color]
    if not changers:
        return None
    tr = changers[int(rng.integers(len(changers)))]
    return {"question": f"What colour does the {tr.shape} turn into?",
            "candidates": _options(rng, tr.last_color, [tr.first_color], 5, COLOR_NAMES, shuffle),
            "answer": tr.last_color}


def _transition(a: str, b: str) -> str:
    return f"From {a} to {b}"


def _q_scene_transition(video, rng, shuffle):
    k = video.scene_change
    if k is None:
        return None
    a, b = video.scenes[0], video.scenes[-1]
    c, = _pick(rng, SCENE_NAMES, exclude=(a, b))
    distractors = [_transition(b, a), _transition(a, c) if rng.random() < 0.5 else _transition(c, b)]
    canonical = tuple(_transition(x, y) for x in SCENE_NAMES for y in SCENE_NAMES if x != y)
    return {"question": "How does the scene change?",
            "candidates": _options(rng, _transition(a, b), distractors, 3, canonical, shuffle),
            "answer": _transition(a, b)}


def _q_object_existence(video, rng, shuffle):
    present = {(c, t.shape) for t in video.tracks for c, v in zip(t.color, t.visible) if v}
    if rng.random() < 0.5 and present:
        c, s = sorted(present)[int(rng.integers(len(present)))]
        ans = "yes"
    else:
        # an absent object that shares its colour or its shape with a present one when possible
        near = [(c, s) for c in COLOR_NAMES for s in SHAPES if (c, s) not in present
                and any(c == pc or s == ps for pc, ps in present)]
        pool = near or [(c, s) for c in COLOR_NAMES for s in SHAPES if (c, s) not in present]
        c, s = pool[int(rng.integers(len(pool)))]
        ans = "no"
    return {"question": f"Is there a {c} {s} in the video?",
            "candidates": _options(rng, ans, ["no" if ans == "yes" else "yes"], 2, YES_NO, shuffle), "answer": ans}


QUESTION_MAKERS = {"moving_direction": _q_moving_direction, "moving_attribute": _q_moving_attribute,
                   "object_count": _q_object_count, "appearance_order": _q_appearance_order,
                   "state_change": _q_state_change, "scene_transition": _q_scene_transition,
                   "object_existence": _q_object_existence}


def all_questions(video: Video, rng: np.random.Generator, *, shuffle: bool = True) -> Dict[str, dict]:
    """Every task's question that is well defined on ``video`` (task -> item without ``video``)."""
    out = {}
    for task in TASKS:
        q = QUESTION_MAKERS[task](video, rng, shuffle)
        if q is not None:
            out[task] = q
    return out


def describe(video: Video) -> str:
    """A dense caption listing the scene(s) and every object with its motion, appearance and colour change."""
    parts = [f"The scene is {video.scenes[0]}."]
    tracks = sorted(video.tracks, key=lambda t: (t.first_frame, t.x[t.first_frame], t.y[t.first_frame]))
    n = len(tracks)
    parts.append(f"There {'is' if n == 1 else 'are'} {NUMBERS[n - 1] if 1 <= n <= 4 else n} "
                 f"object{'' if n == 1 else 's'}.")
    for t in tracks:
        s = f"The {t.name}"
        events = []
        if t.first_frame > 0:
            events.append("appears later")
        events.append(f"moves {t.direction}" if t.moving else "stays still")
        if t.last_color != t.first_color:
            events.append(f"turns {t.last_color}")
        if t.last_frame < NUM_FRAMES - 1:
            events.append("disappears")
        parts.append(s + " " + ", then ".join(events) + ".")
    if video.scene_change is not None:
        parts.append(f"The scene changes to {video.scenes[-1]}.")
    return " ".join(parts)


# ----------------------------------------------------------------------------------------------------------
# Items, splits, files
# ----------------------------------------------------------------------------------------------------------

@dataclass
class Sample:
    """One generated item: the task's own question, the video (tracks, frames) and extra supervision."""

    task: str
    item: dict                    # {"question", "candidates", "answer"} (+ "video" in a written split)
    video: Video
    extra: Dict[str, dict] = field(default_factory=dict)    # other tasks' questions on the same video
    caption: str = ""

    @property
    def frames(self) -> np.ndarray:
        return self.video.frames


def make_item(task: str, rng: np.random.Generator, *, difficulty: float = 1.0, shuffle: bool = True,
              extras: bool = False) -> Sample:
    """Generate one item of ``task`` from ``rng``."""
    if task not in VIDEO_MAKERS:
        raise ValueError(f"unknown task {task!r}; tasks: {list(TASKS)}")
    for _ in range(100):
        try:
            video = VIDEO_MAKERS[task](rng, difficulty)
        except _PlacementError:          # rare (crowded layouts with movers): draw the whole video again
            continue
        q = QUESTION_MAKERS[task](video, rng, shuffle)
        if q is not None:
            break
    else:  # pragma: no cover - every designed video defines its task's question
        raise RuntimeError(f"could not generate a {task} item")
    sample = Sample(task=task, item=q, video=video)
    if extras:
        sample.extra = {k: v for k, v in all_questions(video, rng, shuffle=shuffle).items() if k != task}
        sample.caption = describe(video)
    return sample


def item_rng(seed: int, task: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), TASKS.index(task), int(index)]))


def split_items(seed: int, n_per_task: int, tasks=TASKS):
    """Yield (task, index, Sample) of a split, in file order, from the per-item seeds."""
    for task in tasks:
        for i in range(n_per_task):
            yield task, i, make_item(task, item_rng(seed, task, i))


def video_name(task: str, index: int) -> str:
    return f"{task}_{index:04d}.mp4"


# ----------------------------------------------------------------------------------------------------------
# Where an object is, in pixels and in visual tokens (ground truth for the tutorials' pictures and rates)
# ----------------------------------------------------------------------------------------------------------

def object_pixels(track: Track, frame: int, size: int = FRAME_SIZE) -> np.ndarray:
    """(size, size) bool: the pixels ``render`` paints for ``track`` in ``frame`` (all False where it is
    hidden); the same placement and clipping as ``render``."""
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


def token_coverage(track: Track, grid: int, size: int = FRAME_SIZE) -> np.ndarray:
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


def named_track(sample: Sample) -> Optional[Track]:
    """The object a question names by colour and shape ("Which direction does the red square move?"): the first
    track of that shape showing that colour in some visible frame; None when the question names no such object
    (counting, scenes) or it is absent (object existence answered "no")."""
    words = sample.item["question"].rstrip("?").split()
    for a, b in zip(words, words[1:]):
        if a in COLORS and b in SHAPES:
            for tr in sample.video.tracks:
                if tr.shape == b and any(c == a and v for c, v in zip(tr.color, tr.visible)):
                    return tr
            return None
    return None


def _hash_item(h, item: dict, frames: np.ndarray) -> None:
    h.update(json.dumps(item, sort_keys=True).encode())
    h.update(np.ascontiguousarray(frames).tobytes())


def split_checksum(seed: int, n_per_task: int, tasks=TASKS) -> str:
    """sha256 over every item's JSON and raw frames, without writing anything."""
    h = hashlib.sha256()
    for task, i, s in split_items(seed, n_per_task, tasks):
        _hash_item(h, dict(s.item, video=video_name(task, i)), s.frames)
    return h.hexdigest()


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


def split_dir(root: str, split: str = "test") -> str:
    """``<root>/Synthetic`` for the test split (what a runner reads), ``<root>/Synthetic/<split>`` otherwise."""
    base = os.path.join(root, BENCHMARK_DIR)
    return base if split == "test" else os.path.join(base, split)


def write_split(root: str, split: str = "test", *, n_per_task: Optional[int] = None, seed: Optional[int] = None,
                tasks=TASKS, codec: str = "libx264", log: Optional[Callable[[str], None]] = None) -> dict:
    """Generate a split and write it in the MVBench layout; returns the ``meta.json`` content."""
    if split not in SPLIT_SEEDS and seed is None:
        raise ValueError(f"unknown split {split!r} (known: {sorted(SPLIT_SEEDS)}); pass a seed")
    seed = SPLIT_SEEDS[split] if seed is None else int(seed)
    n_per_task = DEFAULT_N_PER_TASK.get(split, 50) if n_per_task is None else int(n_per_task)
    out = split_dir(root, split)
    os.makedirs(os.path.join(out, "json"), exist_ok=True)
    t0 = time.time()
    h = hashlib.sha256()
    counts = {}
    for task in tasks:
        vdir = os.path.join(out, "video", task)
        os.makedirs(vdir, exist_ok=True)
        items = []
        for i in range(n_per_task):
            s = make_item(task, item_rng(seed, task, i))
            name = video_name(task, i)
            item = {"video": name, **s.item}
            _hash_item(h, item, s.frames)
            write_mp4(os.path.join(vdir, name), s.frames, codec=codec)
            items.append(item)
        with open(os.path.join(out, "json", f"{task}.json"), "w") as f:
            json.dump(items, f, indent=1)
        counts[task] = len(items)
        if log:
            log(f"{task}: {len(items)} items")
    meta = {"benchmark": BENCHMARK_DIR, "split": split, "seed": seed, "generator_version": GENERATOR_VERSION,
            "n_per_task": n_per_task, "counts": counts, "total": sum(counts.values()),
            "num_frames": NUM_FRAMES, "file_frames": FILE_FRAMES, "frame_size": FRAME_SIZE, "fps": FPS,
            "codec": codec,
            "tasks": {t: {"json": f"json/{t}.json", "prefix": f"video/{t}/", "data_type": "video", "bound": False,
                          "num_options": NUM_OPTIONS[t], "chance": CHANCE[t]} for t in tasks},
            "chance": float(np.mean([CHANCE[t] for t in tasks])),
            "checksum": h.hexdigest(), "checksum_covers": "sha256 over json.dumps(item, sort_keys=True) and the raw "
                                                         "uint8 frames of every item, in task then index order",
            "seconds": round(time.time() - t0, 2)}
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def ensure_split(root: str, split: str = "test", **kwargs) -> str:
    """Generate the split under ``root`` unless a matching ``meta.json`` is there; return its folder."""
    out = split_dir(root, split)
    p = os.path.join(out, "meta.json")
    if os.path.isfile(p):
        with open(p) as f:
            meta = json.load(f)
        want_seed = SPLIT_SEEDS.get(split) if kwargs.get("seed") is None else int(kwargs["seed"])
        want_n = DEFAULT_N_PER_TASK.get(split, 50) if kwargs.get("n_per_task") is None else int(kwargs["n_per_task"])
        if (meta.get("seed"), meta.get("n_per_task"), meta.get("generator_version")) == (
                want_seed, want_n, GENERATOR_VERSION):
            return out
    # the first use writes into the data root (./DATAS by default): say what and where, once
    n = DEFAULT_N_PER_TASK.get(split, 50) if kwargs.get("n_per_task") is None else int(kwargs["n_per_task"])
    tasks = kwargs.get("tasks", TASKS)
    message = (f"generating the synthetic benchmark's {split} split ({n * len(tasks)} short mp4 clips and their "
               f"questions, about {max(1, round(0.05 * n * len(tasks)))} MB) into {os.path.abspath(out)}: done once, "
               f"reused by later runs; --data-root or $PRUNEVID_DATA puts it elsewhere")
    (kwargs.get("log") or (lambda m: print(f"[data] {m}", file=sys.stderr, flush=True)))(message)
    write_split(root, split, **kwargs)
    return out


# ----------------------------------------------------------------------------------------------------------
# In-memory sampling for training
# ----------------------------------------------------------------------------------------------------------

def sample(rng: np.random.Generator, task: Optional[str] = None, *, difficulty: float = 1.0, shuffle: bool = True,
           extras: bool = True, tasks=TASKS) -> Sample:
    """One training item drawn from ``rng`` (uniform task unless given), from the same generator as the
    files; ``difficulty`` < 1 and ``shuffle=False`` give the curriculum's easier items."""
    if task is None:
        task = tasks[int(rng.integers(len(tasks)))]
    return make_item(task, rng, difficulty=difficulty, shuffle=shuffle, extras=extras)


def frames_tensor(samples: List[Sample]):
    """(B, T, H, W, 3) uint8 torch tensor of the samples' frames."""
    import torch
    return torch.from_numpy(np.stack([s.frames for s in samples]))


def vocabulary_strings() -> List[str]:
    """Every fixed string the benchmark and its prompts can produce (for building a closed vocabulary)."""
    words = [SYNTHETIC_SYSTEM, SYNTHETIC_POST_PROMPT, SYNTHETIC_ANSWER_PREFIX, "Question: Options:", "Describe the video.",
             "Which direction does the move? What colour is the moving object? How many objects are in the video?",
             "What colour is the object that appears first? last? What colour does the turn into?",
             "How does the scene change? Is there a in the video?",
             "The scene is There is are object objects appears later moves stays still then turns disappears "
             "The scene changes to From to",
             "system user assistant"]
    words += list(COLOR_NAMES) + list(SHAPES) + list(SCENE_NAMES) + list(DIRECTIONS) + list(NUMBERS) + list(YES_NO)
    words += [s.capitalize() for s in COLOR_NAMES + SHAPES + SCENE_NAMES]
    return words
