"""The one results schema (``interfaces.md``): ``results.json`` per run, ``samples.jsonl`` per sample.

``samples.jsonl`` is the resume log: one line appended and flushed per finished item, so an interrupted run
continues where it stopped (``RunWriter.done_ids``). ``results.json`` is written atomically at the end.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import tempfile
import uuid
from typing import Iterable, Optional

SAMPLE_FIELDS = ("id", "category", "prediction", "parsed", "answer", "correct", "error")
RESULT_FIELDS = ("run_id", "date", "git_hash", "versions", "config", "method", "n_samples", "metrics", "tokens",
                 "flops", "timing")


def git_hash() -> Optional[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    import torch
    import transformers
    from . import __version__
    return {"prunevid": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def new_run_id(prefix: str = "run") -> str:
    return f"{prefix}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def atomic_write_json(path: str, obj) -> None:
    """Write JSON to a temp file in the same folder, then rename: a reader never sees half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, default=_jsonable)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _jsonable(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


class RunWriter:
    """Writes one run folder: ``samples.jsonl`` line by line, ``results.json`` at the end."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        os.makedirs(output_dir, exist_ok=True)
        self.samples_path = os.path.join(output_dir, "samples.jsonl")
        self.results_path = os.path.join(output_dir, "results.json")

    def read_samples(self) -> list:
        """Finished samples of an earlier (possibly interrupted) run; a torn last line is ignored."""
        if not os.path.exists(self.samples_path):
            return []
        rows = []
        with open(self.samples_path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut off by an interruption: that item runs again
        return rows

    def done_ids(self) -> set:
        return {row["id"] for row in self.read_samples()}

    def append_sample(self, row: dict) -> None:
        missing = [k for k in SAMPLE_FIELDS if k not in row]
        if missing:
            raise ValueError(f"sample row lacks {missing}")
        self._repair_tail()
        with open(self.samples_path, "a") as f:
            f.write(json.dumps(row, default=_jsonable) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _repair_tail(self) -> None:
        """Drop a torn final line left by a crash, so appends start on a clean line."""
        if not os.path.exists(self.samples_path):
            return
        with open(self.samples_path, "rb+") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return          # the usual case: one byte read, not the whole log per append
            f.seek(0)
            data = f.read()
            f.truncate(data.rfind(b"\n") + 1)

    def write_results(self, results: dict) -> dict:
        missing = [k for k in RESULT_FIELDS if k not in results]
        if missing:
            raise ValueError(f"results lack {missing}")
        atomic_write_json(self.results_path, results)
        return results


def base_results(run_id: Optional[str] = None, **fields) -> dict:
    """A results dict with the bookkeeping fields filled and the others ``None`` (or as given)."""
    out = {k: None for k in RESULT_FIELDS}
    out.update(run_id=run_id or new_run_id(), date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               git_hash=git_hash(), versions=versions())
    out.update(fields)
    return out


def mean_stats(rows: Iterable[dict], keys: Iterable[str]) -> dict:
    """Means over samples of the numeric per-sample stats (``tokens`` of results.json)."""
    rows = list(rows)
    out = {}
    for key in keys:
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
        out[key] = sum(vals) / len(vals) if vals else None
    return out
