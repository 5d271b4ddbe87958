"""Video-MME (no subtitles): ``DATAS/Video-MME/json/{short,medium,long}.json`` + ``data/`` (prunevid-method.md §5.4).

The converted JSON (``data_scripts/videomme.py``) keeps the upstream ``domain``, ``sub_category`` and
``task_type`` beside the official fields, so accuracy is also reported per domain and task type.
"""
from __future__ import annotations

import os
from typing import List

from .base import LETTERS, LMMS_SYSTEM, Benchmark, Item, Prompt, load_json, official_mc_prompt

SYSTEM = ("Select the best answer to the following multiple-choice question based on the video. Respond with only "
          "the letter (A, B, C, or D) of the correct option.\n")

# lmms-eval ``videomme`` (external-formats.md §3.3): the text says "and the subtitles" even without subtitles.
LMMS_PRE = ("Select the best answer to the following multiple-choice question based on the video and the subtitles. "
            "Respond with only the letter (A, B, C, or D) of the correct option.")
LMMS_POST = "\nAnswer with the option's letter from the given choices directly."

DURATIONS = {"short": "Short Video", "medium": "Medium Video", "long": "Long Video"}
TOTAL = 2700


def lmms_text(question: str, candidates) -> str:
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(candidates))
    return LMMS_PRE + "\n" + question + "\n" + options + "\n" + LMMS_POST


class VideoMME(Benchmark):
    name = "videomme"
    folder = "Video-MME"
    data_script = "videomme"
    secondary_categories = ("domain", "sub_category", "task_type")

    def required_files(self, data_root: str) -> List[str]:
        return [os.path.join(self.root(data_root), "json", f"{d}.json") for d in DURATIONS]

    def list_items(self, data_root: str) -> List[Item]:
        root = self.root(data_root)
        items = []
        for duration in DURATIONS:
            for i, row in enumerate(load_json(os.path.join(root, "json", f"{duration}.json"))):
                qid = row.get("question_id") or f"{duration}/{i}"
                extra = {k: row.get(k) for k in ("domain", "sub_category", "task_type", "videoID", "question_id")}
                items.append(Item(id=str(qid), category=duration, video=os.path.join(root, "data", row["video"]),
                                  question=row["question"], candidates=list(row["candidates"]), answer=row["answer"],
                                  extra=extra))
        return items

    def prompt(self, item: Item, protocol: str) -> Prompt:
        if protocol == "official":
            return official_mc_prompt(SYSTEM, item)
        return Prompt(system=LMMS_SYSTEM, text=lmms_text(item.question, item.candidates))
