"""The kit's generated benchmark (``prunevid.synthetic``): MVBench's layout and prompts under ``DATAS/Synthetic``.

The test split is generated on first use (deterministic from its seed; a few seconds). Items are listed round
robin over the tasks, so ``--limit N`` covers every task. ``synthetic-val`` is the held-out validation split
(``DATAS/Synthetic/val``, another seed): choose settings there, report on ``synthetic``.

``synthetic-v2`` / ``synthetic-v2-val`` are the benchmark's version 2 (``prunevid.synthetic.version2``: clutter,
more objects, no question answerable from its text; 300 items per task in the test split) under
``DATAS/Synthetic-v2``; ``synthetic-v3`` / ``synthetic-v3-val`` version 3 (``prunevid.synthetic.version3``:
version 2's questions with evidence on screen for a few frames only) under ``DATAS/Synthetic-v3``. ``synthetic``
keeps meaning version 1 until a demo model trained on a later version ships.
"""
from __future__ import annotations

import functools
import json
import os
from typing import List

from .base import Item, Prompt, load_json
from .mvbench import MVBench


class Synthetic(MVBench):
    name = "synthetic"
    folder = "Synthetic"
    data_script = "synthetic"
    split = "test"

    def default_frames(self, protocol: str) -> int:
        """16 under either protocol: the videos hold 16 generated frames (17 in the file, so both samplers pick
        exactly those); lmms-eval's usual 32 would ask for frames that do not exist."""
        from .base import check_protocol
        from ..synthetic import NUM_FRAMES
        check_protocol(protocol)
        return NUM_FRAMES

    def chance(self) -> dict:
        """One over the number of options of each task, in percent."""
        from ..synthetic import CHANCE
        return {k: 100 * v for k, v in CHANCE.items()}

    def prompt(self, item: Item, protocol: str) -> Prompt:
        """Under ``official``: the frozen prompt the demo model was trained on (``prunevid.synthetic.
        SYNTHETIC_SYSTEM`` / ``synthetic_question``: no newline after the system text, no space before the post
        prompt), not the official MVBench text; under ``lmms-eval``: MVBench's lmms-eval prompt."""
        if protocol == "official":
            from ..synthetic import SYNTHETIC_ANSWER_PREFIX, SYNTHETIC_SYSTEM, synthetic_question
            return Prompt(system=SYNTHETIC_SYSTEM, text=synthetic_question(item.question, item.candidates),
                          answer_prefix=SYNTHETIC_ANSWER_PREFIX)
        return super().prompt(item, protocol)

    provides_hints = ("object_masks",)

    def hints(self, item: Item, num_frames: int, protocol: str) -> dict:
        """``object_masks``: (num_frames, H, W) float32 in {0, 1}, the pixels the objects the generator placed
        cover in each frame the protocol samples (clutter, where a generator version has any, is background).

        The item is regenerated from its split's seed (the ``meta.json`` above its videos), task and index (its id
        ``task/index``) with the generator version the split was written by (``generator_version``), and checked
        against the item's question and options; each mask is the union of
        ``pixels.object_pixels`` over the item's tracks. Frames are picked by the same samplers over the file's
        ``FILE_FRAMES`` frames as ``frames`` (at 16 frames both pick the 16 generated frames; the repeated last
        frame of the file is the last generated one). Versions 2 and 3 also give ``question_masks`` (the same frames, in
        {0, 1}): the pixels the question is about (``synthetic.question_pixels``: the asked objects, or the scene for
        a scene transition; a rule on the task, never on the answer)."""
        import numpy as np
        import torch
        from .base import PROTOCOL_SAMPLING, check_protocol
        from .. import video as kit_video
        from ..synthetic import FILE_FRAMES, FPS, FRAME_SIZE, object_pixels
        sample, meta = self._regenerate(item)
        total = int(meta.get("file_frames", FILE_FRAMES))
        if PROTOCOL_SAMPLING[check_protocol(protocol)] == "middle":
            idx = kit_video.segment_midpoint_indices(num_frames, total - 1, float(meta.get("fps", FPS)))
        else:
            idx = kit_video.linspace_indices(num_frames, total)
        last = len(sample.video.scenes) - 1
        size = int(meta.get("frame_size", FRAME_SIZE))
        objects = [tr for tr in sample.video.tracks if not getattr(tr, "clutter", False)]
        masks = np.zeros((num_frames, size, size), np.float32)
        for k, t in enumerate(idx):
            for tr in objects:
                masks[k] = np.maximum(masks[k], object_pixels(tr, min(int(t), last), size))
        out = {"object_masks": torch.from_numpy(masks)}
        if "question_masks" in self.provides_hints:
            from ..synthetic import question_pixels
            task = item.id.rpartition("/")[0]
            question = np.stack([question_pixels(task, sample.video, min(int(t), last), size) for t in idx])
            out["question_masks"] = torch.from_numpy(question.astype(np.float32))
        return out

    def _regenerate(self, item: Item):
        """(the item's ``splits.Sample``, its split's ``meta.json``), checked against the item's question."""
        from .. import synthetic as S
        folder = os.path.dirname(os.path.abspath(item.video))
        meta_path = None
        for _ in range(4):                                   # <root>/video/<task>/<task>_0000.mp4 -> <root>
            if os.path.isfile(os.path.join(folder, "meta.json")):
                meta_path = os.path.join(folder, "meta.json")
                break
            folder = os.path.dirname(folder)
        if meta_path is None:
            raise ValueError(f"{self.name}: no meta.json above {item.video}: cannot regenerate the item's objects")
        meta = _read_meta(meta_path, os.path.getmtime(meta_path))
        task, _, index = item.id.rpartition("/")
        if task not in S.TASKS or not index.isdigit() or os.path.basename(item.video) != S.video_name(task, int(index)):
            raise ValueError(f"{self.name}: item {item.id!r} ({item.video}) is not task/index of a generated split")
        version = meta.get("generator_version", S.GENERATOR_VERSION)        # the generator that wrote the split
        try:
            sample = S.make_item(task, S.item_rng(int(meta["seed"]), task, int(index)),
                                 **({} if version == S.GENERATOR_VERSION else {"version": version}))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{self.name}: cannot regenerate item {item.id!r} with generator version {version} "
                             f"({meta_path}): {e}") from None
        if sample.item["question"] != item.question or list(sample.item["candidates"]) != list(item.candidates):
            raise ValueError(f"{self.name}: item {item.id!r} does not match its regeneration from seed "
                             f"{meta['seed']}: the split on disk is not this generator's")
        return sample, meta

    def required_files(self, data_root: str) -> List[str]:
        return [os.path.join(self.root(data_root), "meta.json")]

    def check_data(self, data_root: str) -> None:
        from .. import synthetic
        synthetic.ensure_split(data_root, self.split)          # generated once, then reused (checked by its meta.json)

    def list_items(self, data_root: str) -> List[Item]:
        root = self.root(data_root)
        with open(os.path.join(root, "meta.json")) as f:
            meta = json.load(f)
        per_task = []
        for task, spec in meta["tasks"].items():
            rows = load_json(os.path.join(root, spec["json"]))
            per_task.append([Item(id=f"{task}/{i}", category=task, video=os.path.join(root, spec["prefix"], row["video"]),
                                  question=row["question"], candidates=list(row["candidates"]), answer=row["answer"],
                                  bound=None, frame_folder=False, extra={"task": task, "chance": spec.get("chance")})
                             for i, row in enumerate(rows)])
        items = []
        for i in range(max((len(t) for t in per_task), default=0)):      # round robin: a limit covers every task
            items += [t[i] for t in per_task if i < len(t)]
        return items


class SyntheticVal(Synthetic):
    name = "synthetic-val"
    folder = os.path.join("Synthetic", "val")
    split = "val"


class SyntheticV2(Synthetic):
    """Version 2 of the synthetic benchmark (``DATAS/Synthetic-v2``): the same layout, prompts and scoring."""

    name = "synthetic-v2"
    folder = "Synthetic-v2"
    split = "test"
    version = 2
    # the version-2 generator records which objects each question is about (the oracle's focus="question")
    provides_hints = ("object_masks", "question_masks")

    def check_data(self, data_root: str) -> None:
        from .. import synthetic
        synthetic.ensure_split(data_root, self.split, version=self.version)


class SyntheticV2Val(SyntheticV2):
    name = "synthetic-v2-val"
    folder = os.path.join("Synthetic-v2", "val")
    split = "val"


class SyntheticV3(SyntheticV2):
    """Version 3 (``DATAS/Synthetic-v3``): version 2's questions with brief evidence (``prunevid.synthetic.version3``:
    what a question needs is on screen for a few frames), so that which tokens a selector keeps decides what the
    model can see. The same layout, prompts, scoring and hints as version 2."""

    name = "synthetic-v3"
    folder = "Synthetic-v3"
    split = "test"
    version = 3


class SyntheticV3Val(SyntheticV3):
    name = "synthetic-v3-val"
    folder = os.path.join("Synthetic-v3", "val")
    split = "val"


@functools.lru_cache(maxsize=8)
def _read_meta(path: str, mtime: float) -> dict:
    """A split's ``meta.json``, read once per file version (``hints`` asks for it at every item; a v2 test split's
    file lists every item's covered share)."""
    with open(path) as f:
        return json.load(f)
