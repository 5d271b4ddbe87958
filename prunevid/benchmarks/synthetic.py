"""The kit's generated benchmark (``prunevid.synthetic``): MVBench's layout and prompts under ``DATAS/Synthetic``.

The test split is generated on first use (deterministic from its seed; a few seconds). Items are listed round
robin over the tasks, so ``--limit N`` covers every task. ``synthetic-val`` is the held-out validation split
(``DATAS/Synthetic/val``, another seed): choose settings there, report on ``synthetic``.
"""
from __future__ import annotations

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
