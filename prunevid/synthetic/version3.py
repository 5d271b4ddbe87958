"""Version 3 of the synthetic world: version 2 with brief evidence. What a question needs is on screen for a few
frames only, as in natural video, so that a token selector that keeps a random quarter of the tokens often misses
it while one that keeps the right tokens does not (issue 24).

Why a version 3: in version 2 every object the question is about stays on screen for most of the 16 frames, so a
random quarter of the tokens almost always still holds some of it. An *ideal reader* (one that answers whenever
one token of the evidence survives; :func:`evidence_survives`) loses only about 7 points at 25% retained under
random keep and none under the object-first oracle: no model, however good, could show the oracle 10 points ahead
of random keep at 25% there (data_scripts/README.md, trial 15). Version 3 keeps version 2's questions (the same
askers: the option set first, the answer uniform, so the text-only guarantee carries over unchanged), its clutter,
object sizes and placement, and changes only when things are visible and how fast the brief movers go:

- moving direction, moving colour: the mover is on screen for 3-5 frames and goes 7-10 px per frame (its travel
  spans its window only); the other objects get windows of any length, so brevity tells nothing.
- counting: each object is on screen for a window of 2-6 frames; the count is of distinct objects over the video.
- appearance order: the three objects appear 2-3 frames apart (version 2: 3-6) and stay.
- state change: the named shape turns colour 2-4 frames before the end (version 2: 5-12).
- existence: every object, the asked one included, is on screen for 1-3 frames.
- scene transition: version 2's (the background is everywhere; no selector can make it brief).

Version 1 and 2 (``world.py``, ``version2.py``) are untouched: their items and checksums stay as recorded.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import numpy as np

from .pixels import FRAME_SIZE, NUM_FRAMES, token_coverage
from .questions import NUMBERS
from .version2 import (ASKERS, OBJECT_SIZE, SPEED, VIDEO_MAKERS_V2, VideoV2, _existence_pairs, _one, _pairs_except,
                       _video)
from .world import (COLOR_NAMES, DIRECTIONS, NUM_OPTIONS, SHAPES, TASKS, Track, _add, _new_track,
                    _PlacementError)

GENERATOR_VERSION_V3 = 3

BRIEF_MOVER_FRAMES = (3, 5)     # frames a question's mover is on screen, [lo, hi]
BRIEF_SPEED = (7.0, 10.0)       # px per frame of a brief mover: 14-40 px over its window (a cell is 16 px)
COUNT_FRAMES = (2, 6)           # frames each counted object is on screen
ORDER_GAP = (2, 3)              # frames between two appearances (version 2: 3..6)
CHANGE_BEFORE_END = (2, 4)      # the state change happens this many frames before the end
EXIST_FRAMES = (1, 3)           # frames each object of an existence video is on screen


def window(rng: np.random.Generator, lo: int, hi: int, T: int = NUM_FRAMES) -> np.ndarray:
    """(T,) bool: ``w`` consecutive visible frames, ``w`` uniform in [lo, hi], the start uniform over the video."""
    w = int(rng.integers(lo, hi + 1))
    a = int(rng.integers(0, T - w + 1))
    vis = np.zeros(T, bool)
    vis[a:a + w] = True
    return vis


def brief_track(rng: np.random.Generator, *, color: str, shape: str, moving: Optional[str], visible: np.ndarray,
                speed_range=BRIEF_SPEED) -> Track:
    """A straight mover (or a static object, ``moving`` None) that is on screen on ``visible`` only and whose travel
    spans that window, so a fast mover stays inside the frame. Off-screen frames hold the nearest on-screen
    position (never drawn; keeps every coordinate inside the frame for whoever reads it)."""
    tr = _new_track(rng, color=color, shape=shape, moving=None, visible=visible,
                    size=int(rng.integers(*OBJECT_SIZE)))
    if moving is None:
        return tr
    S, v = FRAME_SIZE, np.flatnonzero(visible)
    a, w = int(v[0]), len(v)
    margin = tr.size / 2.0 + 2
    speed = float(rng.uniform(*speed_range))
    travel = speed * (w - 1)
    along0 = rng.uniform(margin, S - margin - travel)
    steps = np.clip(np.arange(NUM_FRAMES) - a, 0, w - 1).astype(np.float32)       # held before and after
    pos = along0 + speed * steps
    if moving in ("left", "up"):
        pos = S - pos
    pos = np.round(pos).astype(np.float32)
    if moving in ("left", "right"):
        tr.x = pos
    else:
        tr.y = pos
    return tr


def _brief(rng, color, shape, moving, lo, hi) -> Callable[[], Track]:
    return lambda: brief_track(rng, color=color, shape=shape, moving=moving, visible=window(rng, lo, hi))


def _others(rng, tracks: List[Track], lo: int, hi: int, exclude=(), p_moving: float = 0.5) -> None:
    """``lo``..``hi`` more objects, none named like an ``exclude`` pair, each on screen for a window of any length
    (1-16 frames, so a brief object is not a tell) and moving with probability ``p_moving``."""
    pool = _pairs_except(*exclude)
    for _ in range(int(rng.integers(lo, hi + 1))):
        c, s = _one(rng, pool)
        moving = _one(rng, DIRECTIONS) if rng.random() < p_moving else None
        _add(rng, tracks, lambda c=c, s=s, m=moving: brief_track(rng, color=c, shape=s, moving=m,
                                                                 visible=window(rng, 3, NUM_FRAMES),
                                                                 speed_range=SPEED))


def _video_moving_direction(rng, q, plan):
    tracks: List[Track] = []
    _add(rng, tracks, _brief(rng, plan["color"], plan["shape"], q["answer"], *BRIEF_MOVER_FRAMES))
    _others(rng, tracks, 2, 5, exclude=[(plan["color"], plan["shape"])])
    return _video(rng, tracks, asked=[0])


def _video_moving_attribute(rng, q, plan):
    tracks: List[Track] = []
    _add(rng, tracks, _brief(rng, q["answer"], _one(rng, SHAPES), _one(rng, DIRECTIONS), *BRIEF_MOVER_FRAMES))
    # 2-4 static objects in the options' colours (the answer's too), on screen for windows of any length
    for _ in range(int(rng.integers(2, 5))):
        _add(rng, tracks, _brief(rng, _one(rng, plan["options"]), _one(rng, SHAPES), None, 3, NUM_FRAMES))
    return _video(rng, tracks, asked=[0])


def _video_object_count(rng, q, plan):
    tracks: List[Track] = []
    pairs = _pairs_except()
    # distinct names: two red squares in disjoint windows could be one object seen twice, which no reader can tell
    for j in rng.choice(len(pairs), NUMBERS.index(q["answer"]) + 1, replace=False):
        c, s = pairs[int(j)]
        moving = _one(rng, DIRECTIONS) if rng.random() < 0.3 else None
        _add(rng, tracks, lambda c=c, s=s, m=moving: brief_track(rng, color=c, shape=s, moving=m,
                                                                 visible=window(rng, *COUNT_FRAMES),
                                                                 speed_range=SPEED))
    return _video(rng, tracks, asked=list(range(len(tracks))))


def _video_appearance_order(rng, q, plan):
    n = 3
    starts = [int(rng.integers(0, NUM_FRAMES - 1 - (n - 1) * ORDER_GAP[1]))]
    for _ in range(n - 1):
        starts.append(starts[-1] + int(rng.integers(ORDER_GAP[0], ORDER_GAP[1] + 1)))
    others = [c for c in plan["options"] if c != q["answer"]]
    others = [others[i] for i in rng.permutation(len(others))]
    colors = [q["answer"]] + others if plan["which"] == "first" else others + [q["answer"]]   # in order of appearing
    tracks: List[Track] = []
    for c, t0 in zip(colors, starts):
        _add(rng, tracks, lambda c=c, t0=t0: _new_track(rng, color=c, shape=_one(rng, SHAPES),
                                                         visible=np.arange(NUM_FRAMES) >= t0,
                                                         size=int(rng.integers(*OBJECT_SIZE))))
    return _video(rng, tracks, asked=list(range(len(tracks))))


def _video_state_change(rng, q, plan):
    old = _one(rng, [c for c in COLOR_NAMES if c != q["answer"]])
    tracks: List[Track] = []
    tr = _add(rng, tracks, lambda: _new_track(rng, color=old, shape=plan["shape"],
                                              size=int(rng.integers(*OBJECT_SIZE))))
    k = NUM_FRAMES - int(rng.integers(CHANGE_BEFORE_END[0], CHANGE_BEFORE_END[1] + 1))
    tr.color = [old] * k + [q["answer"]] * (NUM_FRAMES - k)
    # 2-3 objects of the other shapes (the named shape stays unique), half of them changing colour too, late or not
    for _ in range(int(rng.integers(2, 4))):
        c0, c1 = (COLOR_NAMES[i] for i in rng.choice(len(COLOR_NAMES), 2, replace=False))
        d = _add(rng, tracks, lambda c0=c0: _new_track(
            rng, color=c0, shape=_one(rng, [s for s in SHAPES if s != plan["shape"]]),
            moving=_one(rng, DIRECTIONS) if rng.random() < 0.3 else None, size=int(rng.integers(*OBJECT_SIZE)),
            speed_range=SPEED))
        if rng.random() < 0.5:
            j = int(rng.integers(4, NUM_FRAMES - 1))
            d.color = [c0] * j + [c1] * (NUM_FRAMES - j)
    return _video(rng, tracks, asked=[0])


def _video_object_existence(rng, q, plan):
    pairs = _existence_pairs(rng, q, plan)
    tracks: List[Track] = []
    for c, s in pairs:
        moving = _one(rng, DIRECTIONS) if rng.random() < 0.3 else None
        _add(rng, tracks, lambda c=c, s=s, m=moving: brief_track(rng, color=c, shape=s, moving=m,
                                                                 visible=window(rng, *EXIST_FRAMES),
                                                                 speed_range=SPEED))
    return _video(rng, tracks, asked=[0] if q["answer"] == "yes" else [])


VIDEO_MAKERS_V3 = {"moving_direction": _video_moving_direction, "moving_attribute": _video_moving_attribute,
                   "object_count": _video_object_count, "appearance_order": _video_appearance_order,
                   "state_change": _video_state_change, "scene_transition": VIDEO_MAKERS_V2["scene_transition"],
                   "object_existence": _video_object_existence}
assert set(VIDEO_MAKERS_V3) == set(TASKS)


def make_question_and_video_v3(task: str, rng: np.random.Generator):
    """One version-3 item of ``task``: version 2's question (the same asker, the same draws) and a brief-evidence
    video that matches it."""
    q, plan = ASKERS[task](rng)
    for _ in range(100):
        try:
            return q, VIDEO_MAKERS_V3[task](rng, q, plan)
        except _PlacementError:
            continue
    raise RuntimeError(f"could not place a {task} video")  # pragma: no cover


# ----------------------------------------------------------------------------------------------------------
# The ideal reader: how much of an item's evidence a kept token set still holds (no model)
# ----------------------------------------------------------------------------------------------------------

SHOWS = 0.25        # a token shows an object when it holds at least this share of the object's pixels in that frame
                    # (an object touches at most 4 cells, so some token always shows it)


def evidence_survives(task: str, item: dict, video: VideoV2, kept: np.ndarray, grid: int = 7,
                      shows: float = SHOWS, coverage: Optional[np.ndarray] = None) -> float:
    """The chance that an ideal reader answers ``item`` right from the tokens ``kept`` ((T, grid * grid) bool): it
    reads every kept token perfectly and needs only the least evidence the question allows, guessing among the
    options otherwise. Direction and moving colour: the mover shown on two kept frames at least half a cell apart;
    counting: every object shown on some kept token; order: the objects' first kept frames in the right order;
    state change: the named shape shown after the change; scene transition: kept background in both scenes;
    existence: the asked object shown (a "no" is always right). For any world version; an upper bound on what any
    model can do with that kept set, so ``ideal(oracle) - ideal(random)`` bounds what a selector can gain.
    ``coverage``: the tracks' ``token_coverage`` stacked, (K, T, grid * grid), when the caller has it (reused over
    several kept sets of one item)."""
    if task not in NUM_OPTIONS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    chance = 1.0 / NUM_OPTIONS[task]
    cov = coverage if coverage is not None else (
        np.stack([token_coverage(tr, grid) for tr in video.tracks]) if video.tracks
        else np.zeros((0,) + kept.shape))                                        # (K, T, grid * grid)
    share = cov / np.maximum(cov.sum(-1, keepdims=True), 1e-12)                 # of each object's pixels
    seen = [np.flatnonzero(((c >= shows) & kept).any(1)) for c in share]         # kept frames showing each object
    cell = FRAME_SIZE / grid
    if task in ("moving_direction", "moving_attribute"):
        tr, f = video.tracks[0], seen[0]
        if len(f) >= 2 and np.hypot(tr.x[f[-1]] - tr.x[f[0]], tr.y[f[-1]] - tr.y[f[0]]) >= cell / 2:
            return 1.0
        return chance
    if task == "object_count":
        return 1.0 if all(len(f) for f in seen) else 0.0
    if task == "appearance_order":
        first = "first" in item["question"]
        onset = np.array([f[0] if len(f) else (NUM_FRAMES if first else -1) for f in seen])
        answer = next(i for i, tr in enumerate(video.tracks) if tr.first_color == item["answer"])
        if not len(seen[answer]):
            return 0.0
        best = onset.min() if first else onset.max()
        ties = np.flatnonzero(onset == best)
        return 1.0 / len(ties) if answer in ties else 0.0
    if task == "state_change":
        tr = video.tracks[0]
        k = next(t for t in range(NUM_FRAMES) if tr.color[t] == tr.last_color)
        return 1.0 if (seen[0] >= k).any() else chance
    if task == "scene_transition":
        bg = (cov.sum(0) == 0) & kept if len(cov) else kept                     # no object pixel at all
        c = video.scene_change
        return 1.0 if (bg[:c].any() and bg[c:].any()) else chance
    if task == "object_existence":
        if item["answer"] == "no":
            return 1.0
        return 1.0 if len(seen[0]) else 0.0
    raise AssertionError(task)  # pragma: no cover - every task is handled above

