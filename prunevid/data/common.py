"""Shared steps of the data scripts: download (resumable), unpack (resumable), verify, report.

Download goes through ``huggingface_hub.snapshot_download(..., local_dir=...)``, which skips finished files
and resumes partial ones, so rerunning a data script after an interruption continues. For tests and offline
mirrors a *hub mirror* folder can stand in for the Hub: ``--hub-mirror DIR`` or ``$PRUNEVID_HUB_MIRROR``,
laid out as ``DIR/<org>/<name>/<files of the dataset repo>``; files are then copied from there instead.
"""
from __future__ import annotations

import fnmatch
import json
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional

HUB_MIRROR_ENV = "PRUNEVID_HUB_MIRROR"


class DataError(RuntimeError):
    """A data-script step failed (download, archive, schema); the message says which and what to do."""


def fetch(repo_id: str, dest: str, *, revision: Optional[str] = None, allow_patterns: Optional[List[str]] = None,
          mirror: Optional[str] = None, token=None, log: Callable = print) -> str:
    """Download a dataset repo snapshot into ``dest`` (resumable) and return ``dest``."""
    mirror = mirror or os.environ.get(HUB_MIRROR_ENV)
    os.makedirs(dest, exist_ok=True)
    if mirror:
        src = os.path.join(mirror, repo_id)
        if not os.path.isdir(src):
            raise DataError(f"dataset {repo_id} is not in the hub mirror {mirror} (expected {src})")
        n = 0
        for dirpath, _, files in os.walk(src):
            for name in files:
                rel = os.path.relpath(os.path.join(dirpath, name), src)
                if allow_patterns and not any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                    continue
                out = os.path.join(dest, rel)
                if os.path.exists(out) and os.path.getsize(out) == os.path.getsize(os.path.join(dirpath, name)):
                    continue        # already there: resumable like the Hub download
                os.makedirs(os.path.dirname(out), exist_ok=True)
                shutil.copyfile(os.path.join(dirpath, name), out + ".part")
                os.replace(out + ".part", out)
                n += 1
        log(f"[data] {repo_id}: {n} file(s) copied from the hub mirror {mirror}")
        return dest
    try:
        from huggingface_hub import snapshot_download
        log(f"[data] downloading {repo_id}{'@' + revision if revision else ''} -> {dest} (resumable; rerun to continue)")
        snapshot_download(repo_id=repo_id, repo_type="dataset", revision=revision, local_dir=dest,
                          allow_patterns=allow_patterns, token=token)
    except Exception as e:  # network, gating, missing repo: one clear line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"download of {repo_id} failed ({type(e).__name__}: {first}); check the network, "
                        f"`huggingface-cli login` for gated datasets, or pass --repo-id if the dataset moved") from e
    return dest


def unzip(archive: str, dest: str, *, rename: Optional[Callable[[str], Optional[str]]] = None,
          log: Callable = print) -> int:
    """Extract ``archive`` into ``dest``; ``rename(member) -> relative path or None (skip)``. Members already
    extracted with the right size are skipped (a rerun after an interruption only extracts what is missing);
    each member is written to a ``.part`` file and renamed, so no half-written video is ever left."""
    n = 0
    try:
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if info.is_dir():
                    continue
                rel = rename(info.filename) if rename else info.filename
                if not rel:
                    continue
                out = os.path.join(dest, rel)
                if os.path.exists(out) and os.path.getsize(out) == info.file_size:
                    continue
                os.makedirs(os.path.dirname(out), exist_ok=True)
                with z.open(info) as src, open(out + ".part", "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                os.replace(out + ".part", out)
                n += 1
    except zipfile.BadZipFile as e:
        raise DataError(f"{archive} is not a valid zip ({e}); delete it and rerun to download it again") from e
    log(f"[data] {os.path.basename(archive)}: {n} file(s) extracted")
    return n


def flatten(member: str) -> Optional[str]:
    """Keep only the basename of an archive member (VLMEvalKit's Video-MME unpacking)."""
    base = os.path.basename(member)
    return base or None


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".part"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def read_parquet(path: str) -> List[dict]:
    import pyarrow.parquet as pq
    return pq.read_table(path).to_pylist()


def parquet_rows(snapshot: str, config: str) -> Optional[List[dict]]:
    """All rows of ``<snapshot>/<config>/*.parquet`` (None when the config folder holds none)."""
    folder = os.path.join(snapshot, config)
    if not os.path.isdir(folder):
        return None
    files = sorted(f for f in os.listdir(folder) if f.endswith(".parquet"))
    if not files:
        return None
    rows = []
    for f in files:
        rows.extend(read_parquet(os.path.join(folder, f)))
    return rows


def require_columns(rows: List[dict], columns: Iterable[str], what: str) -> None:
    if not rows:
        return
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise DataError(f"{what} lacks column(s) {missing} (has {sorted(rows[0])}); the upstream schema changed")


def video_opens(path: str) -> Optional[str]:
    """None when the video (or frame folder) can be read, else why not."""
    from .. import video
    if not os.path.exists(path):
        return "missing"
    if os.path.isdir(path):
        frames = [f for f in os.listdir(path) if f.lower().endswith((".jpg", ".png"))]
        return None if frames else "empty frame folder"
    try:
        n, _ = video.video_info(path)
    except Exception as e:
        return f"unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    return None if n > 0 else "no frames"


@dataclass
class Report:
    """What a data script found: per part the item count (vs the known total), missing and unreadable videos."""

    benchmark: str
    root: str
    counts: dict = field(default_factory=dict)          # part -> [found, expected]
    missing_files: List[str] = field(default_factory=list)
    missing_videos: List[str] = field(default_factory=list)
    unreadable: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    check_counts: bool = True
    _checked: set = field(default_factory=set, repr=False)

    @property
    def count_mismatches(self) -> dict:
        return {k: v for k, v in self.counts.items() if v[1] is not None and v[0] != v[1]}

    @property
    def ok(self) -> bool:
        return not (self.missing_files or self.missing_videos or self.unreadable
                    or (self.check_counts and self.count_mismatches))

    def check_video(self, path: str, open_check: bool = True) -> None:
        """Record ``path`` as missing or unreadable; each path is checked once (videos shared by questions)."""
        if path in self._checked:
            return
        self._checked.add(path)
        if not os.path.exists(path):
            self.missing_videos.append(path)
        elif open_check:
            why = video_opens(path)
            if why:
                self.unreadable.append(f"{path}: {why}")

    def to_dict(self) -> dict:
        return {"benchmark": self.benchmark, "root": self.root, "ok": self.ok, "counts": self.counts,
                "count_mismatches": self.count_mismatches, "missing_files": self.missing_files,
                "missing_videos": sorted(self.missing_videos), "unreadable": self.unreadable, "notes": self.notes}

    def text(self, show: int = 10) -> str:
        lines = [f"[data] {self.benchmark} under {self.root}: {'OK' if self.ok else 'INCOMPLETE'}"]
        for part, (found, expected) in self.counts.items():
            flag = "" if expected is None or found == expected else "  <- differs from the known total"
            lines.append(f"  {part}: {found} items" + (f" (known total {expected})" if expected is not None else "") + flag)
        for title, vals in (("missing annotation files", self.missing_files),
                            ("missing videos", sorted(self.missing_videos)), ("unreadable videos", self.unreadable)):
            if vals:
                lines.append(f"  {title}: {len(vals)}")
                lines.extend(f"    {v}" for v in vals[:show])
                if len(vals) > show:
                    lines.append(f"    ... and {len(vals) - show} more (see data_report.json)")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def save(self, folder: str) -> str:
        path = os.path.join(folder, "data_report.json")
        write_json(path, self.to_dict())
        return path


def downloads_dir(root: str, name: str, download_dir: Optional[str]) -> str:
    return download_dir or os.path.join(root, "_downloads", name)
