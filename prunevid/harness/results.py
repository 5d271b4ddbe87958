"""The one results schema (``interfaces.md``) and the run folder's guarantees (``docs/run-folders.md``).

A run folder holds ``results.json`` (written atomically) and ``samples.jsonl``, the resume log: one line
appended, flushed and fsynced per finished item, so an interrupted run continues where it stopped
(``RunWriter.done_ids``). Reading the log keeps one row per item id (the last complete one) and skips, and
reports, lines that are not a complete row, so a damaged log never makes a rerun duplicate items.

``RunLock`` keeps two runs out of one folder; ``sigterm_as_interrupt`` and ``Interrupted`` turn SIGINT/SIGTERM
into one line and an interim ``results.json`` marked ``"complete": false``. Every file the kit writes into a
run folder is readable by the group and others (the umask's mode, 0644 under the usual 022), like
``samples.jsonl``: a folder shared between the nodes of one job must be readable by all of them.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from typing import Iterable, Optional

SAMPLE_FIELDS = ("id", "category", "prediction", "parsed", "answer", "correct", "error")
RESULT_FIELDS = ("run_id", "date", "git_hash", "versions", "config", "method", "n_samples", "metrics", "tokens",
                 "flops", "timing")
LOCK_NAME = "run.lock"
RESUME_HINT = "rerun the same command to resume"


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
    from .. import __version__
    return {"prunevid": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def new_run_id(prefix: str = "run") -> str:
    return f"{prefix}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 less the umask (0644 under the usual 022)."""
    try:
        with open("/proc/self/status") as f:               # Linux: read without changing it
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_json(path: str, obj) -> None:
    """Write JSON to a temp file in the same folder, then rename: a reader never sees half a file. The file gets
    the mode a plain write would (``file_mode``), not mkstemp's 0600."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        os.fchmod(fd, file_mode())
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


def is_complete(results_path: str) -> bool:
    """Whether ``results_path`` holds a finished run's results: it exists, parses and is not an interim file
    (``"complete": false``, written when a run was interrupted). Files without the key (older runs) count."""
    try:
        with open(results_path) as f:
            res = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(res, dict) and res.get("complete", True) is not False


class RunWriter:
    """Writes one run folder: ``samples.jsonl`` line by line, ``results.json`` at the end.

    After ``read_samples``: ``skipped`` holds the 1-based numbers of lines that are not a complete row,
    ``duplicates`` the number of rows replaced by a later row of the same id, ``torn`` whether the last line was
    cut off (a crash mid-write; the next append drops it)."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        os.makedirs(output_dir, exist_ok=True)
        self.samples_path = os.path.join(output_dir, "samples.jsonl")
        self.results_path = os.path.join(output_dir, "results.json")
        self.skipped: list = []
        self.duplicates = 0
        self.torn = False

    def read_samples(self) -> list:
        """Finished samples of earlier (possibly interrupted) runs: one row per item id, the last complete one, in
        the order the ids were first logged. A line that does not parse as a JSON object holding every field of
        ``SAMPLE_FIELDS`` is skipped (its item runs again unless another line holds it), wherever it is."""
        self.skipped, self.duplicates, self.torn = [], 0, False
        if not os.path.exists(self.samples_path):
            return []
        by_id: dict = {}
        with open(self.samples_path, "rb") as f:
            lines = f.read().split(b"\n")
        last = len(lines) - 1            # the text after the final newline: empty, or a torn line
        for i, raw in enumerate(lines):
            if not raw.strip():
                continue
            row = _parse_row(raw)
            if row is None:
                if i == last:
                    self.torn = True     # interrupted mid-write: expected after a kill, not damage
                else:
                    self.skipped.append(i + 1)
                continue
            if row["id"] in by_id:
                self.duplicates += 1
            by_id[row["id"]] = row       # a later complete row wins; the id keeps its first position
        return list(by_id.values())

    def problems(self) -> Optional[str]:
        """One line on what the last ``read_samples`` skipped or de-duplicated, or None when the log was clean."""
        parts = []
        if self.skipped:
            shown = ", ".join(map(str, self.skipped[:5])) + (", ..." if len(self.skipped) > 5 else "")
            parts.append(f"skipped {len(self.skipped)} unreadable line(s) (line {shown}; their items run again "
                         f"unless logged on another line)")
        if self.duplicates:
            parts.append(f"ignored {self.duplicates} duplicate row(s) (the last complete row of each id counts)")
        return f"{self.samples_path}: " + "; ".join(parts) if parts else None

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


def _parse_row(raw: bytes) -> Optional[dict]:
    try:
        row = json.loads(raw)
    except ValueError:            # JSONDecodeError and UnicodeDecodeError
        return None
    if not isinstance(row, dict) or any(k not in row for k in SAMPLE_FIELDS):
        return None
    try:
        hash(row["id"])
    except TypeError:
        return None
    return row


def items_digest(rows: Iterable[dict]) -> str:
    """sha1 of the sorted item ids of ``rows``: two runs scored the same items exactly when their digests match
    (``results.json``'s ``items_sha1``, used by the sweep index to pair a cell with its unpruned run)."""
    ids = sorted(str(r["id"]) for r in rows)
    return hashlib.sha1("\n".join(ids).encode()).hexdigest()


def status_fields(rows: Iterable[dict], *, complete: bool) -> dict:
    """The fields a run adds to its results: ``complete`` (False for the interim file of an interrupted run)
    and ``items_sha1`` (``items_digest`` of the scored rows)."""
    return {"complete": bool(complete), "items_sha1": items_digest(rows)}


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


# ------------------------------------------------------------------------------------------------ lock
class RunLocked(ValueError):
    """The run folder is held by another run (a ``ValueError``: the CLI prints it as one ``error:`` line)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True             # someone else's live process
    except (OSError, OverflowError, ValueError):
        return False
    return True


def _flock(fd: int) -> None:
    import fcntl
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


class RunLock:
    """An exclusive hold on a run folder: ``OUTPUT_DIR/run.lock`` names the holder (pid, host, start time,
    command) while a run writes there, and is emptied when it ends.

    Two checks, so that a dead run never blocks the folder and a live one is never ignored:
    - an ``flock`` on the file, which the kernel drops when the holder dies (kill -9 included): a second run
      that cannot take it is refused at once, naming the holder;
    - the recorded holder: when the file names a process, it is taken over only when it is stale — on this
      host, a process that no longer runs (or any process, when the flock was free: the kernel says it is gone);
      on another host (a shared folder) it cannot be checked from here, so the run is refused with the path to
      delete once that run is known to be gone. Where the filesystem has no flock (some network filesystems),
      the recorded holder alone decides.
    The file itself is never deleted (deleting it while another process waits for its flock would let two runs
    hold two different files). Under torchrun only rank 0 holds it, for the whole job: the other ranks write
    only their own ``samples.rank<r>.jsonl`` after rank 0 took the lock and before rank 0 merges them.
    """

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self.fd: Optional[int] = None
        self.flocked = False

    def holder(self) -> Optional[dict]:
        """The recorded holder ({pid, host, started, command}) or None when the file is empty or unreadable."""
        try:
            with open(self.path) as f:
                text = f.read()
        except OSError:
            return None
        try:
            h = json.loads(text) if text.strip() else None
        except ValueError:
            return None
        return h if isinstance(h, dict) else None

    def _refusal(self, h: Optional[dict], other_host: bool = False) -> RunLocked:
        h = h or {}
        who = f"pid {h.get('pid', '?')} on {h.get('host', '?')}"
        since = f" since {h['started']}" if h.get("started") else ""
        cmd = f" ({h['command']})" if h.get("command") else ""
        msg = (f"{self.folder} is in use by another run: {who}{since}{cmd}; wait for it to finish or use another "
               f"--output-dir")
        if other_host:
            msg += f" (if that run is gone, delete {self.path})"
        return RunLocked(msg)

    def acquire(self) -> "RunLock":
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            try:
                _flock(fd)
                self.flocked = True
            except BlockingIOError:
                raise self._refusal(self.holder()) from None
            except OSError as e:       # no flock here (ENOLCK, EOPNOTSUPP, ...): the recorded holder decides
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.EBADF):
                    raise
                self.flocked = False
            h = self.holder()
            if h is not None and not self._stale(h):
                raise self._refusal(h, other_host=h.get("host") != socket.gethostname())
            me = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                  "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)               # closing drops the flock too
            raise
        self.fd = fd
        return self

    def _stale(self, h: dict) -> bool:
        if h.get("host") != socket.gethostname():
            return False               # another machine's process: not checkable from here
        pid = h.get("pid")
        if not isinstance(pid, int):
            return True
        if self.flocked:
            return True                # same kernel, flock free: whoever wrote this no longer holds the folder
        return pid == os.getpid() or not _pid_alive(pid)

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)   # empty = free; the file stays (see the class docstring)
        except OSError:
            pass
        os.close(self.fd)              # drops the flock
        self.fd = None

    def __enter__(self):
        return self.acquire() if self.fd is None else self

    def __exit__(self, *exc):
        self.release()
        return False


# ------------------------------------------------------------------------------------------------ signals
class Terminated(KeyboardInterrupt):
    """Raised by the SIGTERM handler of ``sigterm_as_interrupt``: handled like Ctrl-C."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM after writing what it had. ``str()`` is the one line to print
    (empty on torchrun ranks other than 0); ``exit_code`` is 130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, message: str, signal_name: str = "SIGINT"):
        super().__init__(message)
        self.signal_name = signal_name
        self.exit_code = 143 if signal_name == "SIGTERM" else 130

    def __str__(self):
        return self.args[0] if self.args else ""


def interrupted_message(done: int, total: int) -> str:
    return f"interrupted: {done}/{total} done; {RESUME_HINT}"


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Inside the block SIGTERM raises ``Terminated`` (a KeyboardInterrupt) instead of ending the process at
    once, so a run's cleanup writes what it has. Main thread only (elsewhere a no-op); the previous handler
    comes back on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated("SIGTERM")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):       # no signals here (an embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def signal_name(exc: BaseException) -> str:
    return "SIGTERM" if isinstance(exc, Terminated) or getattr(exc, "signal_name", None) == "SIGTERM" else "SIGINT"


# ------------------------------------------------------------------------------------------------ summary
def _accuracy(rows: list) -> Optional[float]:
    """Accuracy in percent over the rows with a public answer (as ``benchmarks.base.mc_metrics``)."""
    scored = [r for r in rows if r.get("answer") is not None]
    return 100.0 * sum(1 for r in scored if r.get("correct")) / len(scored) if scored else None


def unpruned_reference(output_dir: str, rows: list, match_keys: Iterable[str]) -> Optional[dict]:
    """The unpruned accuracy on the same items, when a ``--method none`` run of the same definition (the
    ``match_keys`` of ``run_config.json``: benchmark, model, weights, protocol, frames, ...) lies beside
    ``output_dir`` (the default ``runs/<benchmark>-<model>-<method>-<protocol>`` layout puts it there) and has
    logged every item of ``rows``. Returns {"dir", "accuracy", "n"} or None."""
    try:
        with open(os.path.join(output_dir, "run_config.json")) as f:
            mine = json.load(f)
    except (OSError, ValueError):
        return None
    if (mine.get("method") or {}).get("name") == "none" or not rows:
        return None
    ids = {r["id"] for r in rows if r.get("answer") is not None}
    if not ids:
        return None
    here = os.path.abspath(output_dir)
    parent = os.path.dirname(here)
    for name in sorted(os.listdir(parent)):
        d = os.path.join(parent, name)
        if d == here:
            continue
        try:
            with open(os.path.join(d, "run_config.json")) as f:
                rc = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(rc, dict) or (rc.get("method") or {}).get("name") != "none":
            continue
        if any(json.dumps(rc.get(k), sort_keys=True) != json.dumps(mine.get(k), sort_keys=True) for k in match_keys):
            continue
        ref = {r["id"]: r for r in RunWriter(d).read_samples()}
        if not ids <= set(ref):
            continue
        acc = _accuracy([ref[i] for i in ids])
        if acc is not None:
            return {"dir": d, "accuracy": acc, "n": len(ids)}
    return None


def eval_summary(res: dict, reference: Optional[dict] = None) -> str:
    """The line ``python -m prunevid eval`` ends with: score (and the unpruned score on the same items when
    known), retained visual tokens, counts, and where results.json is."""
    m, n = res["metrics"] or {}, res["n_samples"] or {}
    if m.get("accuracy") is not None:
        score = f"accuracy {m['accuracy']:.2f}%"
        if reference is not None:
            where = os.path.relpath(reference["dir"])
            where = reference["dir"] if where.startswith("..") else where
            score += f" (unpruned {reference['accuracy']:.2f}% on the same {reference['n']} items: {where})"
    elif m.get("scores"):
        score = f"scores {m.get('scores')}"
    else:
        score = "no score (see results.json)"
    tokens = res.get("tokens") or {}
    retained, budget = tokens.get("retained_ratio"), tokens.get("budget_ratio")
    kept = f"; retained {100 * retained:.1f}% of visual tokens" if isinstance(retained, (int, float)) else ""
    if kept and isinstance(budget, (int, float)) and abs(budget - retained) > 5e-4:
        # a method whose budget is met on another measure (Method.budget_measure) says both
        first, second = {"layer_average": ("after its last cut", "per decoder layer on average"),
                         "kv": ("in the prefill", "in the KV cache")}.get(
            budget_measure(res["method"]["name"]), ("", "by its budget's measure"))
        kept = f"{kept}{' ' + first if first else ''}, {100 * budget:.1f}% {second}"
    return (f"[eval] {res['config']['benchmark']} / {res['config']['model']} / {res['method']['name']}: {score}{kept}; "
            f"{n.get('done')}/{n.get('total')} done, {n.get('errors')} errors, {n.get('unparsed')} unparsed -> "
            f"{res['config']['output_dir']}/results.json")


def budget_measure(method: str) -> str:
    """``Method.budget_measure`` of ``method``; ``"retained_ratio"`` for a name this version does not know (an old
    results.json or run folder)."""
    from ..methods import method_class
    try:
        return method_class(method).budget_measure
    except ValueError:
        return "retained_ratio"
