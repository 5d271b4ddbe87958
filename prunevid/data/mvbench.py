"""MVBench: ``OpenGVLab/MVBench`` (main branch, gated) -> ``DATAS/MVBench/{json,video}``.

The main branch ships ``json/<task>.json`` (already the official format) and ``video/<source>.zip`` archives
whose top folders are the loaders' prefixes (``star/Charades_v1_480/...``); ``data0613.zip`` holds videos
replaced after a June 2024 fix as ``data0613/<a>/<b>/<file>``, moved to ``<a>/<b>/<file>`` (over the old
copies). NTU RGB+D (fine_grained_pose) was removed upstream: its videos are reported missing with a note.
"""
from __future__ import annotations

import glob
import os
import shutil

from ..benchmarks.mvbench import ITEMS_PER_TASK, TASKS
from .common import DataError, Report, downloads_dir, fetch, unzip

DEFAULT_REPO = "OpenGVLab/MVBench"
DEFAULT_REVISION = "main"
PATTERNS = ["json/*", "video/*.zip", "README.md"]


def _data0613(member: str):
    parts = member.split("/")
    if parts[0] == "data0613":
        parts = parts[1:]
    return "/".join(parts) if parts and parts[-1] else None


def convert(snapshot: str, root: str, log=print) -> None:
    dest = os.path.join(root, "MVBench")
    jsons = sorted(glob.glob(os.path.join(snapshot, "json", "*.json")))
    if not jsons:
        raise DataError(f"no json/<task>.json in {snapshot}: not an MVBench main-branch snapshot")
    os.makedirs(os.path.join(dest, "json"), exist_ok=True)
    for p in jsons:
        shutil.copyfile(p, os.path.join(dest, "json", os.path.basename(p)))
    archives = sorted(glob.glob(os.path.join(snapshot, "video", "*.zip")))
    # the patch archive last, so its fixed videos replace the old ones
    archives.sort(key=lambda p: os.path.basename(p) == "data0613.zip")
    for a in archives:
        if os.path.basename(a) == "data0613.zip":
            unzip(a, os.path.join(dest, "video"), rename=_data0613, log=log)
        else:
            unzip(a, os.path.join(dest, "video"), log=log)


def verify(root: str, *, open_check: bool = True, check_counts: bool = True) -> Report:
    import json
    dest = os.path.join(root, "MVBench")
    rep = Report("mvbench", dest, check_counts=check_counts)
    for task, (json_name, prefix, kind, _bounded) in TASKS.items():
        path = os.path.join(dest, "json", json_name)
        if not os.path.exists(path):
            rep.missing_files.append(path)
            continue
        with open(path) as f:
            rows = json.load(f)
        rep.counts[task] = [len(rows), ITEMS_PER_TASK]
        for row in rows:
            if row.get("answer") not in row.get("candidates", []):
                rep.notes.append(f"{json_name}: answer {row.get('answer')!r} is not one of the candidates")
            rep.check_video(os.path.join(dest, "video", prefix, row["video"]), open_check)
    if any("/nturgbd/" in p for p in rep.missing_videos):
        rep.notes.append("nturgbd.zip was removed from OpenGVLab/MVBench (2024-10-18); fetch the clips listed in "
                         "video/MVBench_videos_ntu.txt from NTU RGB+D yourself into MVBench/video/nturgbd/")
    return rep


def prepare(root: str, *, repo_id: str = DEFAULT_REPO, revision: str = DEFAULT_REVISION, download_dir=None,
            mirror=None, skip_download: bool = False, verify_only: bool = False, open_check: bool = True,
            check_counts: bool = True, token=None, log=print) -> Report:
    if not verify_only:
        snap = downloads_dir(root, "MVBench", download_dir)
        if not skip_download:
            fetch(repo_id, snap, revision=revision, allow_patterns=PATTERNS, mirror=mirror, token=token, log=log)
        convert(snap, root, log=log)
    return verify(root, open_check=open_check, check_counts=check_counts)
