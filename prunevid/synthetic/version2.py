"""Version 2 of the synthetic world: cluttered backgrounds, more and smaller objects, faster movers, and item
makers that draw the question before the video, so that no question can be answered from its text alone.

The rule every task follows (issue 24): the option set is drawn first, by a process that does not depend on
which option will be right; the answer is then a uniformly random member of it (the options in a uniformly
random order); the video is made to match that answer. So the answer is independent of everything a text-only
solver sees (question wording, option values, their order, lengths, structure): every such solver is at chance
in expectation, and ``tests/test_synthetic_v2.py`` checks it on held-out items.

Clutter is static and baked into each scene's background: textured patches (stripes, checks) and small shapes
(4-8 px, objects are 12-17 px) in colours that are never object colours (:data:`CLUTTER_COLORS`), so no clutter
can be the named object, a counted object or a mover. Each :class:`VideoV2` records its clutter and which tracks
its question is about (``asked``), from which :func:`covered_share` measures how small a share of the visual
tokens matters. Version 1 (``world.py``, ``questions.py``) is untouched: its items and checksums stay as recorded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .pixels import COLORS, FRAME_SIZE, NUM_FRAMES, make_background, object_pixels, shape_mask, token_coverage
from .questions import NUMBERS, YES_NO, _transition
from .world import (COLOR_NAMES, DIRECTIONS, SCENE_NAMES, SHAPES, TASKS, Track, Video, _PlacementError, _add,
                    _new_track)

GENERATOR_VERSION_V2 = 2

# Clutter colours: none is an object colour (COLORS) nor close to one, so clutter never matches a named colour.
CLUTTER_COLORS = {"grey": (128, 128, 128), "white": (238, 238, 238), "black": (18, 18, 18), "pink": (240, 160, 195),
                  "cyan": (80, 215, 215), "brown": (105, 68, 36)}
OBJECT_SIZE = (12, 18)          # object side in px, [lo, hi) (version 1: 16..24): more objects, fewer tokens each
CLUTTER_SIZE = (4, 9)           # clutter shape side in px, [lo, hi): well below any object
SPEED = (3.0, 4.0)              # px per frame (version 1: 2..3): 45-60 px of travel over 16 frames
TOKEN_GRID = 7                  # the demo model's 7 x 7 visual tokens per frame

assert not set(CLUTTER_COLORS) & set(COLORS)


@dataclass
class Clutter:
    """One static clutter element painted into a scene's background: a small shape or a textured patch."""

    kind: str                     # "shape" or "patch"
    x: int                        # top-left corner, px
    y: int
    w: int
    h: int
    color: Optional[str] = None   # a CLUTTER_COLORS name (shapes)
    shape: Optional[str] = None


@dataclass
class VideoV2(Video):
    """A version-2 video: a :class:`~prunevid.synthetic.world.Video` plus its clutter and the tracks it is asked
    about (indexes into ``tracks``; empty when the question names no object: scene transition, an absent object)."""

    clutter: Dict[str, List[Clutter]] = field(default_factory=dict)     # scene name -> its clutter
    asked: List[int] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------
# Clutter and placement
# ----------------------------------------------------------------------------------------------------------

def cluttered_background(rng: np.random.Generator, scene: str) -> Tuple[np.ndarray, List[Clutter]]:
    """A version-1 scene texture plus 2-4 textured patches and 6-12 small shapes -> (texture, clutter list)."""
    S = FRAME_SIZE
    bg = make_background(rng, scene)
    items: List[Clutter] = []
    for _ in range(int(rng.integers(2, 5))):
        w, h = (int(v) for v in rng.integers(10, 29, size=2))
        x0, y0 = int(rng.integers(0, S - w + 1)), int(rng.integers(0, S - h + 1))
        period = int(rng.integers(2, 5))
        yy, xx = np.mgrid[0:h, 0:w]
        checks = rng.random() < 0.5
        pat = ((xx // period + yy // period) % 2) if checks else ((xx // period) % 2)
        delta = float(rng.uniform(25, 45)) * (1 if rng.random() < 0.5 else -1)     # lighter or darker stripes
        bg[y0:y0 + h, x0:x0 + w] = np.clip(bg[y0:y0 + h, x0:x0 + w] + delta * pat[..., None], 0, 255)
        items.append(Clutter("patch", x0, y0, w, h))
    names = tuple(CLUTTER_COLORS)
    for _ in range(int(rng.integers(6, 13))):
        size = int(rng.integers(*CLUTTER_SIZE))
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        color = names[int(rng.integers(len(names)))]
        x0, y0 = int(rng.integers(0, S - size + 1)), int(rng.integers(0, S - size + 1))
        bg[y0:y0 + size, x0:x0 + size][shape_mask(shape, size)] = CLUTTER_COLORS[color]
        items.append(Clutter("shape", x0, y0, size, size, color=color, shape=shape))
    return bg, items


def _video(rng: np.random.Generator, tracks: List[Track], asked: List[int],
           scenes: Optional[List[str]] = None) -> VideoV2:
    if scenes is None:
        scenes = [SCENE_NAMES[int(rng.integers(len(SCENE_NAMES)))]] * NUM_FRAMES
    backgrounds, clutter = {}, {}
    for s in dict.fromkeys(scenes):
        backgrounds[s], clutter[s] = cluttered_background(rng, s)
    return VideoV2(scenes=scenes, backgrounds=backgrounds, tracks=tracks, noise_seed=int(rng.integers(2 ** 31)),
                   clutter=clutter, asked=asked)


def _track(rng, color: str, shape: str, moving: Optional[str] = None, visible=None) -> Callable[[], Track]:
    size = lambda: int(rng.integers(*OBJECT_SIZE))                        # noqa: E731 - drawn per try
    return lambda: _new_track(rng, color=color, shape=shape, moving=moving, visible=visible, size=size(),
                              speed_range=SPEED)


def _one(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _pairs_except(*excluded) -> List[Tuple[str, str]]:
    return [(c, s) for c in COLOR_NAMES for s in SHAPES if (c, s) not in excluded]


def _distractors(rng, tracks: List[Track], lo: int, hi: int, exclude=(), p_moving: float = 0.5) -> None:
    """``lo``..``hi`` more objects, none named like an ``exclude`` pair; each moves (uniform direction) with
    probability ``p_moving``."""
    pool = _pairs_except(*exclude)
    for _ in range(int(rng.integers(lo, hi + 1))):
        c, s = _one(rng, pool)
        moving = _one(rng, DIRECTIONS) if rng.random() < p_moving else None
        _add(rng, tracks, _track(rng, c, s, moving))


def _shuffled(rng, options) -> List[str]:
    options = list(options)
    return [options[i] for i in rng.permutation(len(options))]


# ----------------------------------------------------------------------------------------------------------
# Each task: ask(rng) draws the question (options, then a uniform answer, then their order); video(rng, plan)
# draws a video that matches it (called again on a placement failure, the question kept, so that crowded
# layouts never tilt the answers).
# ----------------------------------------------------------------------------------------------------------

def _ask_moving_direction(rng):
    color, shape = _one(rng, COLOR_NAMES), _one(rng, SHAPES)
    answer = _one(rng, DIRECTIONS)
    return {"question": f"Which direction does the {color} {shape} move?", "candidates": _shuffled(rng, DIRECTIONS),
            "answer": answer}, {"color": color, "shape": shape}


def _video_moving_direction(rng, q, plan):
    tracks: List[Track] = []
    _add(rng, tracks, _track(rng, plan["color"], plan["shape"], q["answer"]))
    # 2-5 others, half of them moving: the named one must be found among movers of other names
    _distractors(rng, tracks, 2, 5, exclude=[(plan["color"], plan["shape"])])
    return _video(rng, tracks, asked=[0])


def _ask_moving_attribute(rng):
    options = [COLOR_NAMES[i] for i in sorted(rng.choice(len(COLOR_NAMES), 4, replace=False))]
    answer = _one(rng, options)
    return {"question": "What colour is the moving object?", "candidates": _shuffled(rng, options),
            "answer": answer}, {"options": options}


def _video_moving_attribute(rng, q, plan):
    tracks: List[Track] = []
    _add(rng, tracks, _track(rng, q["answer"], _one(rng, SHAPES), _one(rng, DIRECTIONS)))
    # 2-4 static objects in the options' colours (the answer's too): which colours are present tells nothing
    for _ in range(int(rng.integers(2, 5))):
        _add(rng, tracks, _track(rng, _one(rng, plan["options"]), _one(rng, SHAPES)))
    return _video(rng, tracks, asked=[0])


def _ask_object_count(rng):
    answer = _one(rng, NUMBERS)
    return {"question": "How many objects are in the video?", "candidates": _shuffled(rng, NUMBERS),
            "answer": answer}, {}


def _video_object_count(rng, q, plan):
    tracks: List[Track] = []
    for _ in range(NUMBERS.index(q["answer"]) + 1):
        c, s = _one(rng, COLOR_NAMES), _one(rng, SHAPES)
        _add(rng, tracks, _track(rng, c, s, _one(rng, DIRECTIONS) if rng.random() < 0.3 else None))
    return _video(rng, tracks, asked=list(range(len(tracks))))


def _ask_appearance_order(rng):
    options = [COLOR_NAMES[i] for i in sorted(rng.choice(len(COLOR_NAMES), 3, replace=False))]
    which = "first" if rng.random() < 0.5 else "last"
    answer = _one(rng, options)
    return {"question": f"What colour is the object that appears {which}?", "candidates": _shuffled(rng, options),
            "answer": answer}, {"options": options, "which": which}


def _video_appearance_order(rng, q, plan):
    n = 3
    starts = [int(rng.integers(0, 4))]
    for _ in range(n - 1):
        starts.append(int(rng.integers(starts[-1] + 3, min(starts[-1] + 7, NUM_FRAMES - 3 * (n - len(starts))) + 1)))
    others = [c for c in plan["options"] if c != q["answer"]]
    others = [others[i] for i in rng.permutation(len(others))]
    colors = [q["answer"]] + others if plan["which"] == "first" else others + [q["answer"]]   # in order of appearing
    tracks: List[Track] = []
    for c, t0 in zip(colors, starts):
        _add(rng, tracks, _track(rng, c, _one(rng, SHAPES), visible=np.arange(NUM_FRAMES) >= t0))
    return _video(rng, tracks, asked=list(range(len(tracks))))


def _ask_state_change(rng):
    shape = _one(rng, SHAPES)
    answer = _one(rng, COLOR_NAMES)
    return {"question": f"What colour does the {shape} turn into?", "candidates": _shuffled(rng, COLOR_NAMES),
            "answer": answer}, {"shape": shape}


def _video_state_change(rng, q, plan):
    old = _one(rng, [c for c in COLOR_NAMES if c != q["answer"]])
    tracks: List[Track] = []
    tr = _add(rng, tracks, _track(rng, old, plan["shape"]))
    k = int(rng.integers(4, 12))
    tr.color = [old] * k + [q["answer"]] * (NUM_FRAMES - k)
    # 2-3 objects of the other shapes (the named shape stays unique), half of them changing colour too
    for _ in range(int(rng.integers(2, 4))):
        c0, c1 = (COLOR_NAMES[i] for i in rng.choice(len(COLOR_NAMES), 2, replace=False))
        d = _add(rng, tracks, _track(rng, c0, _one(rng, [s for s in SHAPES if s != plan["shape"]]),
                                     _one(rng, DIRECTIONS) if rng.random() < 0.3 else None))
        if rng.random() < 0.5:
            j = int(rng.integers(4, 12))
            d.color = [c0] * j + [c1] * (NUM_FRAMES - j)
    return _video(rng, tracks, asked=[0])


def _ask_scene_transition(rng):
    # Options: with probability 3/4 a pair of mutually reversed transitions plus any third transition, else three
    # unrelated ones. The reversed pair keeps order in play; the answer is drawn after, uniformly, so no rule on
    # the options (reversals, shared endpoints, ...) can find it.
    pairs = [(a, b) for a in SCENE_NAMES for b in SCENE_NAMES if a != b]
    if rng.random() < 0.75:
        a, b = _one(rng, pairs)
        rest = [p for p in pairs if p not in ((a, b), (b, a))]
        chosen = [(a, b), (b, a), _one(rng, rest)]
    else:
        chosen = [pairs[i] for i in rng.choice(len(pairs), 3, replace=False)]
    options = [_transition(a, b) for a, b in chosen]
    i = int(rng.integers(3))
    return {"question": "How does the scene change?", "candidates": _shuffled(rng, options),
            "answer": options[i]}, {"scenes": chosen[i]}


def _video_scene_transition(rng, q, plan):
    a, b = plan["scenes"]
    k = int(rng.integers(4, 13))
    tracks: List[Track] = []
    _distractors(rng, tracks, 2, 5)
    return _video(rng, tracks, asked=[], scenes=[a] * k + [b] * (NUM_FRAMES - k))


def _ask_object_existence(rng):
    color, shape = _one(rng, COLOR_NAMES), _one(rng, SHAPES)
    answer = _one(rng, YES_NO)
    return {"question": f"Is there a {color} {shape} in the video?", "candidates": _shuffled(rng, YES_NO),
            "answer": answer}, {"pair": (color, shape)}


def _existence_pairs(rng, q, plan) -> List[Tuple[str, str]]:
    """The (colour, shape) names of an existence video: the same 3-5 objects whether the answer is yes or no, the
    asked pair first when it is yes, the others mostly sharing the asked colour or shape (version 3 draws the same)."""
    asked = plan["pair"]
    near = [p for p in _pairs_except(asked) if p[0] == asked[0] or p[1] == asked[1]]
    far = [p for p in _pairs_except(asked) if p not in near]
    n = int(rng.integers(3, 6))
    pairs = [asked] if q["answer"] == "yes" else []
    while len(pairs) < n:
        p = _one(rng, near) if rng.random() < 0.6 else _one(rng, far)
        if p not in pairs:
            pairs.append(p)
    return pairs


def _video_object_existence(rng, q, plan):
    pairs = _existence_pairs(rng, q, plan)
    tracks: List[Track] = []
    for c, s in pairs:
        vis = None
        if rng.random() < 0.3:                        # present only for part of the video
            a = int(rng.integers(0, 8))
            b = int(rng.integers(a + 5, NUM_FRAMES + 1))
            vis = (np.arange(NUM_FRAMES) >= a) & (np.arange(NUM_FRAMES) < b)
        _add(rng, tracks, _track(rng, c, s, _one(rng, DIRECTIONS) if rng.random() < 0.3 else None, visible=vis))
    return _video(rng, tracks, asked=[0] if q["answer"] == "yes" else [])


ASKERS = {"moving_direction": _ask_moving_direction, "moving_attribute": _ask_moving_attribute,
          "object_count": _ask_object_count, "appearance_order": _ask_appearance_order,
          "state_change": _ask_state_change, "scene_transition": _ask_scene_transition,
          "object_existence": _ask_object_existence}
VIDEO_MAKERS_V2 = {"moving_direction": _video_moving_direction, "moving_attribute": _video_moving_attribute,
                   "object_count": _video_object_count, "appearance_order": _video_appearance_order,
                   "state_change": _video_state_change, "scene_transition": _video_scene_transition,
                   "object_existence": _video_object_existence}
assert set(ASKERS) == set(VIDEO_MAKERS_V2) == set(TASKS)


def ask(task: str, rng: np.random.Generator) -> dict:
    """The question of the version-2 item that ``rng`` generates ({"question", "candidates", "answer"}), without
    its video: the question is the stream's first draws, so it equals ``make_question_and_video(task, rng)[0]`` for
    a stream in the same state (the text-only solver test reads thousands of items this way)."""
    return ASKERS[task](rng)[0]


def make_question_and_video(task: str, rng: np.random.Generator) -> Tuple[dict, VideoV2]:
    """One version-2 item of ``task``: the question ({"question", "candidates", "answer"}) and a video that matches
    it. The video is not rendered until its ``frames`` are read, so drawing questions alone is cheap."""
    q, plan = ASKERS[task](rng)
    for _ in range(100):
        try:
            return q, VIDEO_MAKERS_V2[task](rng, q, plan)
        except _PlacementError:       # a crowded layout: draw the video again, the question kept
            continue
    raise RuntimeError(f"could not place a {task} video")  # pragma: no cover


# The tracks each task's question is about, by a rule that reads the task and never the answer (the oracle's
# "question" focus, ``prunevid.methods.oracle``): the named or moving object is always ``tracks[0]`` of its maker;
# counting and ordering are about every object; existence too (``asked`` holds the named pair only when the
# answer is yes, so following it would hand the answer to whoever reads the kept set); scene transition is about
# the scenes, so its focus is the background (None).
_QUESTION_FOCUS = {"moving_direction": "first", "moving_attribute": "first", "state_change": "first",
                   "object_count": "all", "appearance_order": "all", "object_existence": "all",
                   "scene_transition": None}
assert set(_QUESTION_FOCUS) == set(TASKS)


def question_tracks(task: str, video: VideoV2) -> Optional[List[int]]:
    """Indexes into ``video.tracks`` of the objects the question of a version-2 ``task`` item is about, the same
    rule whatever the answer: ``[0]`` (the named object, or the mover) for moving direction, moving attribute and
    state change; every track for counting, appearance order and existence; None for scene transition, whose
    question is about the background."""
    if task not in _QUESTION_FOCUS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    rule = _QUESTION_FOCUS[task]
    if rule is None:
        return None
    return [0] if rule == "first" else list(range(len(video.tracks)))


def question_pixels(task: str, video: VideoV2, frame: int, size: int = FRAME_SIZE) -> np.ndarray:
    """(size, size) bool: the pixels of ``frame`` the question is about: the :func:`question_tracks` objects'
    pixels, or for scene transition every pixel no object paints (the scene, clutter included)."""
    tracks = question_tracks(task, video)
    chosen = range(len(video.tracks)) if tracks is None else tracks
    out = np.zeros((size, size), bool)
    for i in chosen:
        out |= object_pixels(video.tracks[i], frame, size)
    return ~out if tracks is None else out


def covered_share(video: VideoV2, grid: int = TOKEN_GRID) -> Optional[Dict[str, float]]:
    """How much of the ``grid`` x ``grid`` token raster the asked tracks cover, averaged over the frames:
    ``tokens`` the share of tokens they touch at all, ``area`` the share of pixels they paint (None when the
    question names no object)."""
    if not video.asked:
        return None
    cov = sum(token_coverage(video.tracks[i], grid) for i in video.asked)          # (T, grid * grid)
    return {"tokens": float((cov > 0).mean()), "area": float(np.minimum(cov, 1.0).mean())}
