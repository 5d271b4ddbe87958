"""Items and splits of the synthetic benchmark: one generated item (:class:`Sample`) and its own random stream,
splits on disk with their checksums, and in-memory draws for training.

Splits are written in the official MVBench layout (``prunevid-method.md`` §5.3, ``external-formats.md`` §2.1)::

    DATAS/Synthetic/json/<task>.json        [{"video", "question", "candidates", "answer"}, ...]
    DATAS/Synthetic/video/<task>/<task>_0000.mp4
    DATAS/Synthetic/meta.json               seed, counts, per-task prefix and chance, checksum

(``--split train`` writes ``DATAS/Synthetic/train/...`` with the same structure.) Every item is generated
from its own random stream ``SeedSequence([seed, task_index, item_index])``, so a split is reproducible
item by item; ``meta.json``'s checksum covers the JSON items and the raw (pre-encoding) frames.

For training, :func:`sample` draws items in memory with the same generator (no mp4), optionally with
a curriculum (``difficulty``, ``shuffle``) and every valid question about the same video
(:func:`~prunevid.synthetic.questions.all_questions`) plus a dense caption
(:func:`~prunevid.synthetic.questions.describe`).

Version 2 of the benchmark (``version2.py``: question drawn before the video, clutter, more objects) is chosen by
``version=2`` on :func:`make_item`, :func:`split_items`, :func:`split_checksum`, :func:`split_dir`,
:func:`write_split`, :func:`ensure_split` and :func:`sample`; it has its own seeds (:data:`SPLIT_SEEDS_V2`), its
own folder (``DATAS/Synthetic-v2``, ``DATAS/Synthetic-v2/<split>``) and ``generator_version: 2`` in ``meta.json``.
Version 3 (``version3.py``: version 2's questions with brief evidence) is chosen the same way (``version=3``,
:data:`SPLIT_SEEDS_V3`, ``DATAS/Synthetic-v3``). Version 1 stays the default and its draws are untouched (its
checksums are pinned in tests/test_synthetic.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

from .questions import QUESTION_MAKERS, all_questions, describe
from .pixels import COLORS, FILE_FRAMES, FPS, FRAME_SIZE, NUM_FRAMES, token_coverage, write_mp4
from .world import CHANCE, GENERATOR_VERSION, NUM_OPTIONS, SHAPES, TASKS, VIDEO_MAKERS, Track, Video, _PlacementError
from .version2 import GENERATOR_VERSION_V2, covered_share, make_question_and_video
from .version3 import GENERATOR_VERSION_V3, evidence_survives, make_question_and_video_v3

BENCHMARK_DIR = "Synthetic"
SPLIT_SEEDS = {"test": 20261124, "val": 777, "train": 1}
DEFAULT_N_PER_TASK = {"test": 50, "val": 50, "train": 500}
# Version 2: new seeds; a 2,100-item test split (300 per task) so that 2-point gaps between methods resolve.
BENCHMARK_DIR_V2 = "Synthetic-v2"
SPLIT_SEEDS_V2 = {"test": 20270124, "val": 7772, "train": 2}
DEFAULT_N_PER_TASK_V2 = {"test": 300, "val": 50, "train": 500}
# Version 3: version 2 with brief evidence (version3.py); its own seeds, the same sizes.
BENCHMARK_DIR_V3 = "Synthetic-v3"
SPLIT_SEEDS_V3 = {"test": 20270306, "val": 7773, "train": 3}
DEFAULT_N_PER_TASK_V3 = dict(DEFAULT_N_PER_TASK_V2)
VERSIONS = (GENERATOR_VERSION, GENERATOR_VERSION_V2, GENERATOR_VERSION_V3)
_BY_VERSION = {1: (BENCHMARK_DIR, SPLIT_SEEDS, DEFAULT_N_PER_TASK),
               2: (BENCHMARK_DIR_V2, SPLIT_SEEDS_V2, DEFAULT_N_PER_TASK_V2),
               3: (BENCHMARK_DIR_V3, SPLIT_SEEDS_V3, DEFAULT_N_PER_TASK_V3)}


def _check_version(version: int) -> int:
    if version not in VERSIONS:
        raise ValueError(f"unknown synthetic benchmark version {version!r} (known: {list(VERSIONS)})")
    return int(version)


def split_seeds(version: int = 1) -> Dict[str, int]:
    """The default seed of each split of ``version``."""
    return _BY_VERSION[_check_version(version)][1]


def default_n_per_task(version: int = 1) -> Dict[str, int]:
    """The default items per task of each split of ``version``."""
    return _BY_VERSION[_check_version(version)][2]


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
              extras: bool = False, version: int = 1) -> Sample:
    """Generate one item of ``task`` from ``rng`` (``version=2``: :mod:`~prunevid.synthetic.version2`, ``version=3``:
    :mod:`~prunevid.synthetic.version3`; neither has a curriculum: ``difficulty`` and ``shuffle`` apply to version 1
    and to the extras only)."""
    if task not in VIDEO_MAKERS:
        raise ValueError(f"unknown task {task!r}; tasks: {list(TASKS)}")
    if _check_version(version) >= 2:
        q, video = (make_question_and_video if version == 2 else make_question_and_video_v3)(task, rng)
        sample = Sample(task=task, item=q, video=video)
        if extras:           # other tasks' questions use version 1's makers (training aids, not benchmark items)
            sample.extra = {k: v for k, v in all_questions(video, rng, shuffle=shuffle).items() if k != task}
            sample.caption = describe(video)
        return sample
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


def split_items(seed: int, n_per_task: int, tasks=TASKS, version: int = 1):
    """Yield (task, index, Sample) of a split, in file order, from the per-item seeds."""
    for task in tasks:
        for i in range(n_per_task):
            yield task, i, make_item(task, item_rng(seed, task, i), version=version)


def video_name(task: str, index: int) -> str:
    return f"{task}_{index:04d}.mp4"


# Which object an item is about: ground truth for the tutorials' pictures and rates (its pixels and tokens:
# pixels.object_pixels, pixels.token_coverage).
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


def split_checksum(seed: int, n_per_task: int, tasks=TASKS, version: int = 1) -> str:
    """sha256 over every item's JSON and raw frames, without writing anything."""
    h = hashlib.sha256()
    for task, i, s in split_items(seed, n_per_task, tasks, version):
        _hash_item(h, dict(s.item, video=video_name(task, i)), s.frames)
    return h.hexdigest()


def split_dir(root: str, split: str = "test", version: int = 1) -> str:
    """``<root>/Synthetic`` for the test split (what a runner reads), ``<root>/Synthetic/<split>`` otherwise
    (``Synthetic-v2``, ``Synthetic-v3`` for versions 2 and 3)."""
    base = os.path.join(root, _BY_VERSION[_check_version(version)][0])
    return base if split == "test" else os.path.join(base, split)


def write_split(root: str, split: str = "test", *, n_per_task: Optional[int] = None, seed: Optional[int] = None,
                tasks=TASKS, codec: str = "libx264", log: Optional[Callable[[str], None]] = None,
                version: int = 1) -> dict:
    """Generate a split and write it in the MVBench layout; returns the ``meta.json`` content."""
    seeds = split_seeds(version)
    if split not in seeds and seed is None:
        raise ValueError(f"unknown split {split!r} (known: {sorted(seeds)}); pass a seed")
    seed = seeds[split] if seed is None else int(seed)
    n_per_task = default_n_per_task(version).get(split, 50) if n_per_task is None else int(n_per_task)
    out = split_dir(root, split, version)
    os.makedirs(os.path.join(out, "json"), exist_ok=True)
    t0 = time.time()
    h = hashlib.sha256()
    counts = {}
    shares: Dict[str, list] = {}
    for task in tasks:
        vdir = os.path.join(out, "video", task)
        os.makedirs(vdir, exist_ok=True)
        items = []
        for i in range(n_per_task):
            s = make_item(task, item_rng(seed, task, i), version=version)
            if version >= 2:
                shares.setdefault(task, []).append(covered_share(s.video))
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
    if version >= 2:
        meta.update(benchmark=_BY_VERSION[version][0], generator_version=version, covered_share=_share_summary(shares))
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def ensure_split(root: str, split: str = "test", *, version: int = 1, **kwargs) -> str:
    """Generate the split under ``root`` unless a matching ``meta.json`` is there; return its folder."""
    out = split_dir(root, split, version)
    p = os.path.join(out, "meta.json")
    defaults = default_n_per_task(version)
    if os.path.isfile(p):
        with open(p) as f:
            meta = json.load(f)
        want_seed = split_seeds(version).get(split) if kwargs.get("seed") is None else int(kwargs["seed"])
        want_n = defaults.get(split, 50) if kwargs.get("n_per_task") is None else int(kwargs["n_per_task"])
        if (meta.get("seed"), meta.get("n_per_task"), meta.get("generator_version")) == (
                want_seed, want_n, GENERATOR_VERSION if version == 1 else version):
            return out
    # the first use writes into the data root (./DATAS by default): say what and where, once
    n = defaults.get(split, 50) if kwargs.get("n_per_task") is None else int(kwargs["n_per_task"])
    tasks = kwargs.get("tasks", TASKS)
    message = (f"generating the synthetic benchmark's {split} split ({n * len(tasks)} short mp4 clips and their "
               f"questions, about {max(1, round(0.05 * n * len(tasks)))} MB) into {os.path.abspath(out)}: done once, "
               f"reused by later runs; --data-root or $PRUNEVID_DATA puts it elsewhere")
    (kwargs.get("log") or (lambda m: print(f"[data] {m}", file=sys.stderr, flush=True)))(message)
    write_split(root, split, version=version, **kwargs)
    return out


def _share_summary(shares: Dict[str, list]) -> dict:
    """meta.json's record of how much of the 7 x 7 token grid the asked objects cover (version 2)."""
    def mean(rows, key):
        vals = [r[key] for r in rows if r is not None]
        return round(float(np.mean(vals)), 4) if vals else None
    every = [r for rows in shares.values() for r in rows]
    return {"what": "share of each frame's 7 x 7 visual tokens that the tracks a question is about touch (tokens) "
                    "or paint (area), mean over frames; items naming no object (scene transition, an absent "
                    "object) are left out of the means",
            "tokens": mean(every, "tokens"), "area": mean(every, "area"),
            "per_task": {t: {"tokens": mean(rows, "tokens"), "area": mean(rows, "area")} for t, rows in shares.items()},
            "items": {t: [None if r is None else round(r["tokens"], 4) for r in rows] for t, rows in shares.items()}}


# ----------------------------------------------------------------------------------------------------------
# In-memory sampling for training
# ----------------------------------------------------------------------------------------------------------

def sample(rng: np.random.Generator, task: Optional[str] = None, *, difficulty: float = 1.0, shuffle: bool = True,
           extras: bool = True, tasks=TASKS, version: int = 1) -> Sample:
    """One training item drawn from ``rng`` (uniform task unless given), from the same generator as the
    files; ``difficulty`` < 1 and ``shuffle=False`` give the curriculum's easier items."""
    if task is None:
        task = tasks[int(rng.integers(len(tasks)))]
    return make_item(task, rng, difficulty=difficulty, shuffle=shuffle, extras=extras, version=version)


def frames_tensor(samples: List[Sample]):
    """(B, T, H, W, 3) uint8 torch tensor of the samples' frames."""
    import torch
    return torch.from_numpy(np.stack([s.frames for s in samples]))


def ideal_accuracy(version: int, n_per_task: int, retain: float, *, draws: int = 3, seed: int = 2024,
                   grid: int = 7) -> Dict[str, Dict[str, float]]:
    """The ideal reader's accuracy (%) per task (and ``"all"``, the task mean) on ``n_per_task`` items of world
    ``version`` (item streams ``item_rng(seed, task, i)``) under two kept sets at ``retain``: ``random`` (a uniform
    draw of the frame tokens, ``draws`` per item) and ``oracle`` (the tokens the objects cover, most covered first,
    then random background: the kit's ``oracle`` method). No model: what the world lets a selector gain
    (:func:`~prunevid.synthetic.version3.evidence_survives` on each item)."""
    rng = np.random.default_rng(0)
    n = NUM_FRAMES * grid * grid
    k = min(n, max(1, int(round(retain * n))))
    out: Dict[str, Dict[str, float]] = {"random": {}, "oracle": {}}
    for task in TASKS:
        rand, orc = [], []
        for i in range(n_per_task):
            s = make_item(task, item_rng(seed, task, i), version=version)
            cov = (np.stack([token_coverage(tr, grid) for tr in s.video.tracks]) if s.video.tracks
                   else np.zeros((0, NUM_FRAMES, grid * grid)))                    # once per item
            for _ in range(draws):
                kept = np.zeros(n, bool)
                kept[rng.choice(n, k, replace=False)] = True
                rand.append(evidence_survives(task, s.item, s.video, kept.reshape(NUM_FRAMES, -1), grid,
                                              coverage=cov))
            kept = np.zeros(n, bool)
            kept[np.lexsort((rng.random(n), -cov.sum(0).reshape(-1)))[:k]] = True
            orc.append(evidence_survives(task, s.item, s.video, kept.reshape(NUM_FRAMES, -1), grid, coverage=cov))
        out["random"][task], out["oracle"][task] = 100 * float(np.mean(rand)), 100 * float(np.mean(orc))
    for sel in out:
        out[sel]["all"] = float(np.mean([out[sel][t] for t in TASKS]))
    return out
