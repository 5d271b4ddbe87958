"""EgoSchema: ``lmms-lab/egoschema`` -> ``DATAS/ego_schema/json/egoschema_fullset.json`` + ``videos/``.

Configs ``MC`` (5031 rows, answers not public) and ``Subset`` (500 rows, ``answer`` = index "0".."4"); fields
question_idx, question, video_idx (= q_uid, the video stem), option (5 strings "A. ..."), answer. The full
set becomes the official items (``video`` = "<q_uid>.mp4", ``question``, ``candidates``, ``answer``) with the
answer text filled for the subset and null elsewhere (scored locally only where known). The GitHub
``subset_answers.json`` ({q_uid: index}) may be given instead of or besides the Subset config.
"""
from __future__ import annotations

import glob
import json
import os
import re

from ..benchmarks.egoschema import FULL_TOTAL, SUBSET_TOTAL
from .common import DataError, Report, downloads_dir, fetch, flatten, parquet_rows, require_columns, unzip, write_json

DEFAULT_REPO = "lmms-lab/egoschema"
PATTERNS = ["MC/*.parquet", "Subset/*.parquet", "videos_chunked_*.zip", "README.md"]
COLUMNS = ("question", "video_idx", "option")


def strip_option(option: str, index: int) -> str:
    return re.sub(rf"^\s*\(?{'ABCDE'[index]}[\.\):]\s*", "", option, count=1) if index < 5 else option


def convert(snapshot: str, root: str, subset_answers=None, log=print) -> None:
    dest = os.path.join(root, "ego_schema")
    full = parquet_rows(snapshot, "MC") or parquet_rows(snapshot, "GENERATION")
    subset = parquet_rows(snapshot, "Subset")
    if full is None and subset is None:
        raise DataError(f"no MC/ or Subset/ parquet in {snapshot}: not an EgoSchema snapshot")
    if full is None:
        log("[data] egoschema: no MC config, the full set is the 500-question subset")
        full = subset
    require_columns(full, COLUMNS, "EgoSchema parquet")
    answers = {}
    for r in subset or []:
        if r.get("answer") not in (None, ""):
            answers[r["video_idx"]] = int(r["answer"])
    if subset_answers:
        with open(subset_answers) as f:
            answers.update({k: int(v) for k, v in json.load(f).items()})
    for a in sorted(glob.glob(os.path.join(snapshot, "videos_chunked_*.zip"))):
        unzip(a, os.path.join(dest, "videos"), rename=flatten, log=log)
    items = []
    for r in full:
        uid = r["video_idx"]
        cands = [strip_option(o, i) for i, o in enumerate(r["option"])]
        idx = answers.get(uid)
        if idx is not None and not 0 <= idx < len(cands):
            raise DataError(f"EgoSchema {uid}: answer index {idx} out of range")
        items.append({"video": f"{uid}.mp4", "question": r["question"], "candidates": cands,
                      "answer": cands[idx] if idx is not None else None, "answer_idx": idx, "q_uid": uid,
                      "question_idx": r.get("question_idx")})
    write_json(os.path.join(dest, "json", "egoschema_fullset.json"), items)
    write_json(os.path.join(dest, "json", "subset_answers.json"), answers)


def verify(root: str, *, open_check: bool = True, check_counts: bool = True) -> Report:
    dest = os.path.join(root, "ego_schema")
    rep = Report("egoschema", dest, check_counts=check_counts)
    path = os.path.join(dest, "json", "egoschema_fullset.json")
    if not os.path.exists(path):
        rep.missing_files.append(path)
        return rep
    with open(path) as f:
        rows = json.load(f)
    rep.counts["fullset"] = [len(rows), FULL_TOTAL]
    rep.counts["subset (public answers)"] = [sum(1 for r in rows if r.get("answer") is not None), SUBSET_TOTAL]
    for row in rows:
        rep.check_video(os.path.join(dest, "videos", row["video"]), open_check)
    return rep


def prepare(root: str, *, repo_id: str = DEFAULT_REPO, revision=None, download_dir=None, mirror=None,
            skip_download: bool = False, verify_only: bool = False, open_check: bool = True, check_counts: bool = True,
            subset_answers=None, token=None, log=print) -> Report:
    if not verify_only:
        snap = downloads_dir(root, "egoschema", download_dir)
        if not skip_download:
            fetch(repo_id, snap, revision=revision, allow_patterns=PATTERNS, mirror=mirror, token=token, log=log)
        convert(snap, root, subset_answers=subset_answers, log=log)
    return verify(root, open_check=open_check, check_counts=check_counts)
