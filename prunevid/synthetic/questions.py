"""What is asked about a synthetic video: the benchmark's frozen prompt strings, answer options, the question
maker of each task, every question a video supports (:func:`all_questions`), a dense caption (:func:`describe`)
and the closed vocabulary of all of it (:func:`vocabulary_strings`).

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
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from .pixels import NUM_FRAMES
from .world import COLOR_NAMES, DIRECTIONS, SCENE_NAMES, SHAPES, TASKS, Track, Video, _pick

NUMBERS = ("one", "two", "three", "four")
YES_NO = ("yes", "no")

# The synthetic benchmark's prompt, frozen: the demo model was trained on this text, an earlier reading of the
# official MVBench prompt. The official text (``benchmarks.mvbench.SYSTEM`` + ``official_user_query``) has a
# newline after the system text and a space before the post prompt; changing the synthetic prompt would change
# what the shipped model was trained on, so it keeps its own name and stays as it is.
SYNTHETIC_SYSTEM = ("Carefully watch the video and pay attention to the cause and sequence of events, the detail and "
                    "movement of objects, and the action and pose of persons. Based on your observations, select the "
                    "best option that accurately addresses the question.")
SYNTHETIC_POST_PROMPT = "\nOnly give the best option."
# Spelled out here rather than taken from ``benchmarks.base`` (``OFFICIAL_ANSWER_PREFIX``,
# ``official_question_block``): the benchmark package imports this one, never the reverse.
# tests/test_synthetic.py checks that both still equal the official ones.
SYNTHETIC_ANSWER_PREFIX = "Best option:("
OPTION_LETTERS = "ABCDEFG"
_QA_LETTERS = "ABCDEFGHIJ"            # the letters of the official qa_template (benchmarks.base.LETTERS)


def synthetic_question(question: str, candidates: List[str]) -> str:
    """The official ``qa_template`` (right-stripped) with the post prompt appended directly (no space): the
    frozen user text of the synthetic benchmark."""
    text = f"Question: {question}\nOptions:\n"
    for letter, cand in zip(_QA_LETTERS, candidates):
        text += f"({letter}) {cand}\n"
    return text.rstrip() + SYNTHETIC_POST_PROMPT


def mvbench_answer(candidates: List[str], answer: str) -> str:
    """The ground-truth string ``"(B) red"`` of the official scorer."""
    return f"({OPTION_LETTERS[candidates.index(answer)]}) {answer}"


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
