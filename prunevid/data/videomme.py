"""Video-MME: ``lmms-lab/Video-MME`` -> ``DATAS/Video-MME/json/{short,medium,long}.json`` + ``data/``.

The parquet (2700 rows: video_id, duration, domain, sub_category, url, videoID, question_id, task_type,
question, options ["A. ...", ...], answer "A".."D") becomes the official item format (``video``, ``question``,
``candidates``, ``answer`` = the correct candidate's text) with the "A. " prefixes stripped from the options
(else the prompt would read "(A) A. ..."), keeping domain, sub_category, task_type and ids for per-category
scores. ``videos_chunked_XX.zip`` hold ``data/<videoID>.mp4``; they are unpacked flat into ``data/``.
"""
from __future__ import annotations

import glob
import os
import re

from ..benchmarks.videomme import DURATIONS, TOTAL
from .common import DataError, Report, downloads_dir, fetch, flatten, parquet_rows, require_columns, unzip, write_json

DEFAULT_REPO = "lmms-lab/Video-MME"
PATTERNS = ["videomme/*.parquet", "videos_chunked_*.zip", "README.md"]
COLUMNS = ("video_id", "duration", "domain", "sub_category", "videoID", "question_id", "task_type", "question",
           "options", "answer")
VIDEO_EXTS = (".mp4", ".MP4", ".mkv")


def strip_option(option: str, letter: str) -> str:
    """"A. text" -> "text" (only the option's own letter prefix is removed)."""
    return re.sub(rf"^\s*\(?{letter}[\.\):]\s*", "", option, count=1)


def convert_rows(rows, video_dir: str):
    require_columns(rows, COLUMNS, "Video-MME parquet")
    per = {d: [] for d in DURATIONS}
    for r in rows:
        letters = "ABCDEFGH"[:len(r["options"])]
        cands = [strip_option(o, letters[i]) for i, o in enumerate(r["options"])]
        ans = str(r["answer"]).strip().upper()
        if ans not in letters:
            raise DataError(f"Video-MME question {r['question_id']}: answer {r['answer']!r} is not an option letter")
        dur = str(r["duration"]).lower()
        if dur not in per:
            raise DataError(f"Video-MME question {r['question_id']}: unknown duration {r['duration']!r}")
        video = f"{r['videoID']}.mp4"
        for ext in VIDEO_EXTS:      # lmms-eval's fallbacks: .mp4, .MP4, .mkv
            if os.path.exists(os.path.join(video_dir, r["videoID"] + ext)):
                video = r["videoID"] + ext
                break
        per[dur].append({"video": video, "question": r["question"], "candidates": cands,
                         "answer": cands[letters.index(ans)], "question_id": r["question_id"],
                         "video_id": r["video_id"], "videoID": r["videoID"], "duration": dur, "domain": r["domain"],
                         "sub_category": r["sub_category"], "task_type": r["task_type"], "answer_letter": ans,
                         "url": r.get("url")})
    return per


def convert(snapshot: str, root: str, log=print) -> None:
    dest = os.path.join(root, "Video-MME")
    rows = parquet_rows(snapshot, "videomme")
    if rows is None:
        raise DataError(f"no videomme/*.parquet in {snapshot}: not a Video-MME snapshot")
    for a in sorted(glob.glob(os.path.join(snapshot, "videos_chunked_*.zip"))):
        unzip(a, os.path.join(dest, "data"), rename=flatten, log=log)
    for dur, items in convert_rows(rows, os.path.join(dest, "data")).items():
        write_json(os.path.join(dest, "json", f"{dur}.json"), items)


def verify(root: str, *, open_check: bool = True, check_counts: bool = True) -> Report:
    import json
    dest = os.path.join(root, "Video-MME")
    rep = Report("videomme", dest, check_counts=check_counts)
    total = 0
    for dur in DURATIONS:
        path = os.path.join(dest, "json", f"{dur}.json")
        if not os.path.exists(path):
            rep.missing_files.append(path)
            continue
        with open(path) as f:
            rows = json.load(f)
        total += len(rows)
        rep.counts[dur] = [len(rows), TOTAL // 3]
        for row in rows:
            rep.check_video(os.path.join(dest, "data", row["video"]), open_check)
    rep.counts["all"] = [total, TOTAL]
    return rep


def prepare(root: str, *, repo_id: str = DEFAULT_REPO, revision=None, download_dir=None, mirror=None,
            skip_download: bool = False, verify_only: bool = False, open_check: bool = True, check_counts: bool = True,
            token=None, log=print) -> Report:
    if not verify_only:
        snap = downloads_dir(root, "Video-MME", download_dir)
        if not skip_download:
            fetch(repo_id, snap, revision=revision, allow_patterns=PATTERNS, mirror=mirror, token=token, log=log)
        convert(snap, root, log=log)
    return verify(root, open_check=open_check, check_counts=check_counts)
