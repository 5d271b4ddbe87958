"""VideoChatGPT-Bench: ``lmms-lab/VideoChatGPT`` -> ``DATAS/VCGBench/Zero_Shot_QA/Benchmarking_QA`` + videos.

Renames the HF fields to Video-ChatGPT's originals: Generic/Temporal (video_name, question, answer) ->
``{video_name, Q, A}``; Consistency holds two rows per item (question_1 set and question_2 == "None", then the
reverse), re-paired by video name and answer in order -> ``{video_name, Q1, Q2, A}``. ``videos.zip`` holds
``Test_Videos/<video_name>.mp4``, unpacked flat into ``Videos/Benchmarking/``.
"""
from __future__ import annotations

import json
import os

from ..benchmarks.vcgbench import FILES, TOTALS, find_video
from .common import DataError, Report, downloads_dir, fetch, flatten, parquet_rows, require_columns, unzip, write_json

DEFAULT_REPO = "lmms-lab/VideoChatGPT"
PATTERNS = ["Generic/*.parquet", "Temporal/*.parquet", "Consistency/*.parquet", "videos.zip", "README.md"]
VIDEO_EXTS = (".mp4", ".mkv", ".avi", ".mov")


def _stem(name: str) -> str:
    base, ext = os.path.splitext(name)
    return base if ext.lower() in VIDEO_EXTS else name


def _none(x) -> bool:
    return x is None or str(x).strip() in ("", "None")


def pair_consistency(rows):
    """Two HF rows per item -> one original item; unmatched halves are an error."""
    require_columns(rows, ("video_name", "question_1", "question_2", "answer"), "VideoChatGPT Consistency parquet")
    q1s, q2s, order = {}, {}, []
    for r in rows:
        key = (_stem(r["video_name"]), r["answer"])
        if key not in q1s:
            q1s[key], q2s[key] = [], []
            order.append(key)
        if not _none(r["question_1"]):
            q1s[key].append(r["question_1"])
        if not _none(r["question_2"]):
            q2s[key].append(r["question_2"])
    out = []
    for key in order:
        if len(q1s[key]) != len(q2s[key]):
            raise DataError(f"VideoChatGPT Consistency: {key[0]} has {len(q1s[key])} question_1 rows but "
                            f"{len(q2s[key])} question_2 rows")
        out.extend({"video_name": key[0], "Q1": a, "Q2": b, "A": key[1]} for a, b in zip(q1s[key], q2s[key]))
    return out


def convert(snapshot: str, root: str, log=print) -> None:
    dest = os.path.join(root, "VCGBench")
    qa = os.path.join(dest, "Zero_Shot_QA", "Benchmarking_QA")
    parts = {}
    for cat, config in (("generic", "Generic"), ("temporal", "Temporal"), ("consistency", "Consistency")):
        rows = parquet_rows(snapshot, config)
        if rows is None:
            raise DataError(f"no {config}/*.parquet in {snapshot}: not a VideoChatGPT snapshot")
        parts[cat] = rows
    for cat in ("generic", "temporal"):
        require_columns(parts[cat], ("video_name", "question", "answer"), f"VideoChatGPT {cat} parquet")
        write_json(os.path.join(qa, FILES[cat]),
                   [{"video_name": _stem(r["video_name"]), "Q": r["question"], "A": r["answer"]} for r in parts[cat]])
    write_json(os.path.join(qa, FILES["consistency"]), pair_consistency(parts["consistency"]))
    archive = os.path.join(snapshot, "videos.zip")
    if os.path.exists(archive):
        unzip(archive, os.path.join(dest, "Videos", "Benchmarking"), rename=flatten, log=log)


def verify(root: str, *, open_check: bool = True, check_counts: bool = True) -> Report:
    dest = os.path.join(root, "VCGBench")
    qa = os.path.join(dest, "Zero_Shot_QA", "Benchmarking_QA")
    videos = os.path.join(dest, "Videos", "Benchmarking")
    rep = Report("vcgbench", dest, check_counts=check_counts)
    for cat, fname in FILES.items():
        path = os.path.join(qa, fname)
        if not os.path.exists(path):
            rep.missing_files.append(path)
            continue
        with open(path) as f:
            rows = json.load(f)
        rep.counts[cat] = [len(rows), TOTALS[cat]]
        for row in rows:
            rep.check_video(find_video(videos, row["video_name"]), open_check)
    return rep


def prepare(root: str, *, repo_id: str = DEFAULT_REPO, revision=None, download_dir=None, mirror=None,
            skip_download: bool = False, verify_only: bool = False, open_check: bool = True, check_counts: bool = True,
            token=None, log=print) -> Report:
    if not verify_only:
        snap = downloads_dir(root, "VideoChatGPT", download_dir)
        if not skip_download:
            fetch(repo_id, snap, revision=revision, allow_patterns=PATTERNS, mirror=mirror, token=token, log=log)
        convert(snap, root, log=log)
    return verify(root, open_check=open_check, check_counts=check_counts)
