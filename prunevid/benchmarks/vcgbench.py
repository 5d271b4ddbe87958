"""VideoChatGPT-Bench: ``DATAS/VCGBench/Zero_Shot_QA/Benchmarking_QA/*.json`` + ``Videos/Benchmarking``.

Generation only (prunevid-method.md §5.6): generic and temporal items are answered once, consistency items
twice (Q1 then Q2). The five scores (CI, DO, CU from generic, TU from temporal, CO from consistency) need an
LLM judge; ``metrics.scores`` is filled from per-sample ``judge`` entries when a judge has run, else None.
"""
from __future__ import annotations

import os
from typing import List

from .base import LMMS_SYSTEM, Benchmark, Item, Prompt, Score, load_json, official_answer_text
from .vcg_judge import DIMENSIONS  # the judge scores these; the benchmark averages them

SYSTEM = ("You are Video-ChatGPT, a large vision-language assistant. You are able to understand the video content "
          "that the user provides, and assist the user with a variety of tasks using natural language.Follow the "
          "instructions carefully and explain your answers in detail based on the provided video.")

FILES = {"generic": "generic_qa.json", "temporal": "temporal_qa.json", "consistency": "consistency_qa.json"}
TOTALS = {"generic": 1996, "temporal": 499, "consistency": 499}
VIDEO_EXTS = (".mp4", ".mkv", ".avi", ".mov")


def find_video(folder: str, name: str) -> str:
    """``<folder>/<name>`` with the first extension that exists (mp4 first, as PruneVid tries mp4 then mkv)."""
    if os.path.splitext(name)[1].lower() in VIDEO_EXTS:
        return os.path.join(folder, name)
    for ext in VIDEO_EXTS:
        p = os.path.join(folder, name + ext)
        if os.path.exists(p):
            return p
    return os.path.join(folder, name + ".mp4")


class VCGBench(Benchmark):
    name = "vcgbench"
    folder = "VCGBench"
    data_script = "vcgbench"
    multiple_choice = False

    def qa_dir(self, data_root: str) -> str:
        return os.path.join(self.root(data_root), "Zero_Shot_QA", "Benchmarking_QA")

    def required_files(self, data_root: str) -> List[str]:
        return [os.path.join(self.qa_dir(data_root), f) for f in FILES.values()]

    def list_items(self, data_root: str) -> List[Item]:
        videos = os.path.join(self.root(data_root), "Videos", "Benchmarking")
        items = []
        for cat, fname in FILES.items():
            for i, row in enumerate(load_json(os.path.join(self.qa_dir(data_root), fname))):
                if cat == "consistency":
                    q, extra = row["Q1"], {"question2": row["Q2"]}
                else:
                    q, extra = row["Q"], {}
                extra["video_name"] = row["video_name"]
                items.append(Item(id=f"{cat}/{i}", category=cat, video=find_video(videos, row["video_name"]),
                                  question=q, answer=row["A"], extra=extra))
        return items

    def _prompt(self, question: str, protocol: str) -> Prompt:
        return Prompt(system=SYSTEM if protocol == "official" else LMMS_SYSTEM, text=question)

    def prompt(self, item: Item, protocol: str) -> Prompt:
        return self._prompt(item.question, protocol)

    def prompts(self, item: Item, protocol: str) -> List[Prompt]:
        out = [self._prompt(item.question, protocol)]
        if item.category == "consistency":
            out.append(self._prompt(item.extra["question2"], protocol))
        return out

    def stops_on_keywords(self, protocol: str) -> bool:
        """Upstream's ``infer_vcgbench`` stops on ``["###", "USER"]`` (both must appear; ``runner.keywords_stop``)."""
        return protocol == "official" and self.options.stop_rule == "official"

    def answer_text(self, prediction: str, protocol: str) -> str:
        """Official: ``pllava_answer``'s text after the last ``ASSISTANT:``, stripped (the prompt ends with it);
        lmms-eval: the generated text as it is."""
        return official_answer_text(prediction) if protocol == "official" else prediction

    def gen_kwargs(self, protocol: str) -> dict:
        # Free-form answers: 100 new tokens under both protocols (16 would cut every answer short).
        return {"max_new_tokens": 100, "do_sample": False, "num_beams": 1}

    def score(self, item: Item, predictions: List[str], protocol: str) -> Score:
        return Score(parsed=None, correct=None, unparsed=False)

    def finalize(self, rows: List[dict], items: List[Item], output_dir: str):
        """Score the rows with the LLM judge when ``PRUNEVID_JUDGE_BASE_URL`` is set (replies cached in
        ``OUTPUT_DIR/judge_cache.jsonl``); without it the predictions are kept and ``metrics.scores`` is None.
        Returns the rows and ``{"judge": what happened}``."""
        from .vcg_judge import Judge, judge_rows          # its HTTP client: loaded when a run ends
        options = self.options
        judge = Judge.from_env(cache_path=os.path.join(output_dir, "judge_cache.jsonl"), parse=options.judge_parse,
                               consistency_labels=options.consistency_labels)
        if judge is None:
            return rows, {"judge": {"status": "not run: set PRUNEVID_JUDGE_BASE_URL (and PRUNEVID_JUDGE_MODEL, "
                                              "OPENAI_API_KEY) and rerun the same command to score"}}
        rows = judge_rows(judge, rows, {it.id: it for it in items})
        return rows, {"judge": {"status": "done", "model": judge.model, "endpoint": judge.url, "calls": judge.calls,
                                "failures": judge.failures, "fallback_parsed": judge.fallback_parsed,
                                "parse": options.judge_parse, "consistency_labels": options.consistency_labels}}

    def aggregate(self, rows: List[dict]) -> dict:
        counts = {}
        for r in rows:
            c = counts.setdefault(str(r.get("category")), {"done": 0, "errors": 0})
            c["done"] += 1
            c["errors"] += 1 if r.get("error") else 0
        scores = judge_scores(rows)
        spread = judge_score_errors(rows) if scores is not None else {"scores_stderr": None, "scores_ci95": None}
        # the accuracy fields every results.json carries, empty here: VCG answers are free-form, judged 0-5
        return {"accuracy": None, "accuracy_stderr": None, "accuracy_ci95": None, "by_category": {},
                "by_category_stderr": {}, "by_category_ci95": {}, "scores": scores, **spread,
                "by_category_counts": counts}


def _judge_values(rows: List[dict]):
    """(per-dimension score lists, per-row {dim: score} of the rows that got any, whether any judge score exists).
    Errored items score 0, as the official scorer scores failed calls."""
    per = {d: [] for d in DIMENSIONS}
    by_row = []
    seen = False
    for r in rows:
        judge = r.get("judge") or {}
        got = {}
        for dim, cat in DIMENSIONS.items():
            if r.get("category") != cat:
                continue
            if dim in judge:
                seen = True
                got[dim] = float(judge[dim]) if judge[dim] is not None else 0.0
            elif r.get("error"):
                got[dim] = 0.0
        for dim, v in got.items():
            per[dim].append(v)
        if got:
            by_row.append(got)
    return per, by_row, seen


def judge_scores(rows: List[dict]):
    """Mean judge score per dimension (0-5) and their plain mean ``avg`` (the paper's Avg), or None when no
    row holds judge scores. Errored items score 0, as the official scorer scores failed calls."""
    per, _, seen = _judge_values(rows)
    if not seen:
        return None
    out = {d: (sum(v) / len(v) if v else None) for d, v in per.items()}
    vals = [v for v in out.values() if v is not None]
    out["avg"] = sum(vals) / len(vals) if len(vals) == len(DIMENSIONS) else None
    return out


def judge_score_errors(rows: List[dict]) -> dict:
    """``scores_stderr`` and ``scores_ci95`` beside ``judge_scores``: per dimension the standard error of the mean
    score (sample sd with n - 1, over √n) and the normal-approximation 95% interval mean ± 1.96·stderr
    (``statistics.mean_interval``), both on the 0-5 scale; None where a dimension has fewer than 2 scores.

    ``avg`` = (CI + DO + CU + TU + CO) / 5, where CI, DO and CU are means over the same generic items (correlated)
    and TU and CO over other items: its stderr is √(se(g)² + se(TU)² + se(CO)²) / 5 with g = CI + DO + CU per
    generic item. None unless every generic item has all three scores and every dimension has a stderr."""
    from ..statistics import Z95, mean_interval
    per, by_row, _ = _judge_values(rows)
    stderr, ci = {}, {}
    for dim, values in per.items():
        _, se, interval = mean_interval(values)
        stderr[dim], ci[dim] = se, interval
    generic = [d for d, cat in DIMENSIONS.items() if cat == "generic"]
    g = [sum(row[d] for d in generic) for row in by_row if all(d in row for d in generic)]
    _, se_g, _ = mean_interval(g)
    others = [stderr[d] for d in DIMENSIONS if d not in generic]
    aligned = all(len(per[d]) == len(g) for d in generic)
    scores = judge_scores(rows) or {}
    if aligned and se_g is not None and all(se is not None for se in others) and scores.get("avg") is not None:
        se_avg = (se_g ** 2 + sum(se ** 2 for se in others)) ** 0.5 / len(DIMENSIONS)
        stderr["avg"], ci["avg"] = se_avg, [scores["avg"] - Z95 * se_avg, scores["avg"] + Z95 * se_avg]
    else:
        stderr["avg"], ci["avg"] = None, None
    return {"scores_stderr": stderr, "scores_ci95": ci}
