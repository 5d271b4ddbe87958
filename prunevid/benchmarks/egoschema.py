"""EgoSchema: ``DATAS/ego_schema/json/egoschema_fullset.json`` + ``videos/<q_uid>.mp4`` (prunevid-method.md §5.5).

``egoschema`` runs the full set (5031): the 500 items with a public answer (the subset) are scored locally,
and every run also writes ``submission.json`` (``{q_uid: answer index}``, the official upload format) in
its output folder. ``egoschema-subset`` runs only the 500 scored items.
"""
from __future__ import annotations

import os
from typing import List

from .base import LETTERS, LMMS_SYSTEM, Benchmark, Item, Prompt, load_json, official_mc_prompt
from .mvbench import SYSTEM  # the official eval.sh uses conv_mode=eval_mvbench for EgoSchema

LMMS_POST = "\nAnswer with the option's letter from the given choices directly."
FULL_TOTAL, SUBSET_TOTAL = 5031, 500


class EgoSchema(Benchmark):
    name = "egoschema"
    folder = "ego_schema"
    data_script = "egoschema"
    subset_only = False

    def required_files(self, data_root: str) -> List[str]:
        return [os.path.join(self.root(data_root), "json", "egoschema_fullset.json")]

    def list_items(self, data_root: str) -> List[Item]:
        root = self.root(data_root)
        items = []
        for row in load_json(os.path.join(root, "json", "egoschema_fullset.json")):
            q_uid = row.get("q_uid") or os.path.splitext(row["video"])[0]
            answer = row.get("answer") or None
            if self.subset_only and answer is None:
                continue
            items.append(Item(id=q_uid, category="subset" if answer is not None else "fullset",
                              video=os.path.join(root, "videos", row["video"]), question=row["question"],
                              candidates=list(row["candidates"]), answer=answer, extra={"q_uid": q_uid}))
        return items

    def prompt(self, item: Item, protocol: str) -> Prompt:
        if protocol == "official":
            return official_mc_prompt(SYSTEM, item)
        options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item.candidates))
        return Prompt(system=LMMS_SYSTEM, text=item.question + "\n" + options + LMMS_POST)


class EgoSchemaSubset(EgoSchema):
    name = "egoschema-subset"
    subset_only = True


def submission(rows: List[dict]) -> dict:
    """``{q_uid: index}`` for every item with a parsed letter (the upload format of the EgoSchema server)."""
    out = {}
    for r in rows:
        letter = r.get("parsed")
        if letter and letter in LETTERS[:5]:
            out[r["id"]] = LETTERS.index(letter)
    return out
