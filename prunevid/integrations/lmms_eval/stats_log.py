"""The plugin's record of what each method did, beside lmms-eval's own files.

lmms-eval writes ``<output_path>/<model>/<date_id>_results.json`` and, with ``--log_samples``,
``<date_id>_samples_<task>.jsonl``; it scores the predictions but knows nothing of visual tokens. The plugin adds,
in the same folder and under the same date id:

- ``<date_id>_prunevid_samples_<task>.jsonl``: one line per request, appended and flushed as it finishes, in the
  kit's samples schema (``prunevid.harness.results``: ``prompt``, ``prediction``, ``error``, every key of
  ``prunevid.state.STATS_KEYS``, ``flops_prefill`` / ``flops_ratio``, timings) keyed by ``task`` and ``doc_id``
  (``id`` is ``"<task>/<doc_id>"``; ``category`` is the task; ``parsed`` / ``answer`` / ``correct`` stay null:
  the task scores in lmms-eval's own sample log);
- ``<date_id>_prunevid_results.json``: per task, the means the kit's ``results.json`` reports (``tokens``,
  ``flops``, ``timing``) and the counts, with the model, the method's resolved settings and the versions.

Under several processes each rank writes its own files (``..._rank<r>.jsonl``, ``..._prunevid_results_rank<r>.json``).
"""
from __future__ import annotations

import datetime as _dt
import inspect
import os
from typing import Dict, List, Optional

from ...harness import results
from ...harness.runner import tokens_summary


def evaluation_context():
    """``(evaluation_tracker, datetime_str)`` of the ``lmms_eval.evaluator.simple_evaluate`` call that is building
    this model, or ``(None, None)`` when the model is built some other way.

    Why a look up the call stack: lmms-eval builds the model inside ``simple_evaluate`` and gives it neither the
    output folder (its ``EvaluationTracker``'s ``output_path``) nor the run's date id, yet both name the files the
    statistics belong beside. ``simple_evaluate`` holds them as its arguments ``evaluation_tracker`` and
    ``datetime_str`` (lmms-eval 0.7.3), so the plugin reads them there rather than asking the user to repeat
    ``--output_path``."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            if frame.f_code.co_name == "simple_evaluate" and frame.f_globals.get("__name__") == "lmms_eval.evaluator":
                return frame.f_locals.get("evaluation_tracker"), frame.f_locals.get("datetime_str")
            frame = frame.f_back
        return None, None
    finally:
        del frame                      # a frame held in a local keeps every frame above it alive


def date_id(datetime_str: Optional[str]) -> str:
    """The id lmms-eval's tracker gives a run's files (``datetime_str`` with ``:`` replaced); a fresh one in lmms-eval's
    format when the run gave none."""
    if not datetime_str:
        datetime_str = _dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    return str(datetime_str).replace(":", "-")


class StatsLog:
    """Collects the per-request rows of one plugin model and writes them (see the module docstring).

    ``folder``: write there (the plugin's ``output_path`` model argument); else the folder lmms-eval's
    ``tracker`` writes its results into (``<output_path>/<sanitized model name>``, known once ``simple_evaluate``
    has logged the run's arguments, i.e. by the first request); neither: nothing is written to disk and the rows
    stay in ``rows``."""

    def __init__(self, header: dict, *, folder: Optional[str] = None, tracker=None, datetime_str: Optional[str] = None,
                 rank: int = 0, world_size: int = 1):
        self.header = dict(header)
        self._folder = folder
        self._tracker = tracker
        self.date_id = date_id(datetime_str)
        self.rank, self.world_size = rank, world_size
        self.rows: List[dict] = []
        self._writers: Dict[str, results.RunWriter] = {}

    def folder(self) -> Optional[str]:
        if self._folder:
            return self._folder
        tracker = self._tracker
        out = getattr(tracker, "output_path", None)
        name = getattr(getattr(tracker, "general_config_tracker", None), "model_name_sanitized", None)
        if not out or name is None:
            return None
        return os.path.join(str(out), name)

    def _suffix(self) -> str:
        return f"_rank{self.rank}" if self.world_size > 1 else ""

    def samples_path(self, task: str) -> Optional[str]:
        folder = self.folder()
        return os.path.join(folder, f"{self.date_id}_prunevid_samples_{task}{self._suffix()}.jsonl") if folder else None

    def results_path(self) -> Optional[str]:
        folder = self.folder()
        return os.path.join(folder, f"{self.date_id}_prunevid_results{self._suffix()}.json") if folder else None

    def add(self, row: dict) -> None:
        """Keep ``row`` and append it to its task's JSONL (flushed and fsynced, as the runner's samples.jsonl)."""
        self.rows.append(row)
        path = self.samples_path(row["task"])
        if path is None:
            return
        writer = self._writers.get(path)
        if writer is None:
            writer = self._writers[path] = results.RunWriter(os.path.dirname(path))
            writer.samples_path = path
        writer.append_sample(row)

    def summary(self) -> dict:
        """Per task: counts, the means of the token statistics, the prefill FLOPs and the timings, over the rows
        without an error (as ``results.json``'s ``tokens`` / ``flops`` / ``timing``)."""
        tasks = {}
        for task in dict.fromkeys(r["task"] for r in self.rows):
            rows = [r for r in self.rows if r["task"] == task]
            ok = [r for r in rows if not r.get("error")]
            fl = results.mean_stats(ok, ("flops_prefill", "flops_ratio"))
            tm = results.mean_stats(rows, ("prefill_ms", "decode_ms_per_token"))
            path = self.samples_path(task)
            tasks[task] = {
                "n_samples": {"done": len(rows), "errors": len(rows) - len(ok)},
                "counts": {"short_clips": sum(1 for r in rows if r.get("short_clip"))},
                "tokens": tokens_summary(rows, (self.header.get("method") or {}).get("name", "none")),
                "flops": None if fl["flops_ratio"] is None else
                {"backend": "analytic", "prefill": fl["flops_prefill"], "ratio_vs_unpruned": fl["flops_ratio"]},
                "timing": {**tm, "total_s": sum(r.get("time_s") or 0.0 for r in rows)},
                "samples_file": os.path.basename(path) if path else None,
            }
        return {**self.header, "date_id": self.date_id, "rank": self.rank, "world_size": self.world_size,
                "tasks": tasks}

    def write_summary(self) -> Optional[str]:
        """Write (or rewrite) the summary JSON atomically; its path, or None where there is no folder."""
        path = self.results_path()
        if path is None:
            return None
        results.atomic_write_json(path, self.summary())
        return path
