#!/usr/bin/env python
"""Check a demo-model candidate against the shipping rule of issue 24 (trial 15 of ``data_scripts/README.md``),
through the kit's runner on the version-2 (or, ``--benchmark synthetic-v3-val``, version-3) validation split.

    python data_scripts/check_demo_candidate.py --model runs/demo_v2/model            # -> verdict + JSON record
    python data_scripts/check_demo_candidate.py --model runs/demo_v2/model --limit 70 # a quick look (not the rule)
    python data_scripts/check_demo_candidate.py --model runs/demo_v3/model --benchmark synthetic-v3-val

The rule (fixed before any version-2 test-split evaluation): on ``synthetic-v2-val`` (50 items per task)

- unpruned >= 85% overall, every task >= chance + 15 points, moving direction >= 70%;
- black frames (``--protocol-option video=black``, the video-blind control) consistent with chance on every task
  (chance inside the task's Wilson interval at 95% family-wise confidence over the 7 tasks, Bonferroni: z = 2.69)
  and pooled over the tasks within 5 points of the mean chance (amended 2026-12-06, before any version-2 test-split
  run: the first form, "within 5 points of chance on every task", fails a model that guesses uniformly at random
  on 97% of draws at 50 items per task — one binomial standard deviation is 6 points there — so it could not tell
  a blind model from a leaky one; simulated in ``tests/test_synthetic_v2.py``);
- at 25% retained, the oracle beats random keep by >= 10 points under both position rules (``positions=renumber``,
  the official rule, and ``positions=original``), with the paired 95% interval excluding zero.

The same rule, unchanged, applies to version 3 on ``synthetic-v3-val`` (fixed 2026-12-06, before any version-3
evaluation: trial 16 of ``data_scripts/README.md``).

After the decision the test split is run once (``--benchmark synthetic-v3 --test-split``): the same checks, which
are issue 24's done-when there, with the issue's own wording of the black-frames check reported beside the interval
form (``reported`` in ``check.json``).

Reported beside the rule, not part of it (added 2026-12-06, before any version-2 test-split run): the oracle with
``focus="question"`` (the tokens the question is about first: the named object, or the scene of a scene
transition) at 25% under both position rules, and its paired gain over random keep: the tighter ceiling.

Every run goes through ``prunevid.harness.runner.evaluate`` (the code path of ``python -m prunevid eval``), into
``--work`` (resumable: a rerun skips what is done). The record (``<work>/check.json``) has every run's accuracy with
its Wilson interval, per task, and the paired comparisons (``prunevid.statistics.compare_paired``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from statistics import NormalDist
from typing import Dict, List, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from prunevid import statistics  # noqa: E402
from prunevid import synthetic as S  # noqa: E402

BENCHMARK = "synthetic-v2-val"
BENCHMARKS = ("synthetic-v2-val", "synthetic-v3-val")        # the validation splits the rule may be applied on
# the test splits, run once after the shipping decision with --test-split (the done-when of issue 24 is measured there)
TEST_SPLITS = ("synthetic-v2", "synthetic-v3")
UNPRUNED_MIN, TASK_MARGIN, DIRECTION_MIN, BLIND_MAX_GAP, ORACLE_GAIN = 85.0, 15.0, 70.0, 5.0, 10.0
# the black-frames intervals: 95% family-wise over the tasks (Bonferroni), so a blind model passes 95% of the time
BLIND_Z = NormalDist().inv_cdf(1 - 0.05 / (2 * len(S.TASKS)))
RETAIN = 0.25
POSITIONS = ("renumber", "original")

# name -> (method, params, protocol options)
RUNS = {"none": ("none", {}, {}),
        "black": ("none", {}, {"video": "black"}),
        **{f"{sel}-{pos}": (sel, {"retain": RETAIN, "positions": pos}, {}) for sel in ("random", "oracle")
           for pos in POSITIONS},
        **{f"question-{pos}": ("oracle", {"retain": RETAIN, "positions": pos, "focus": "question"}, {})
           for pos in POSITIONS}}
REPORTED_ONLY = tuple(f"question-{pos}" for pos in POSITIONS)         # beside the rule, not in it


def outcomes(output_dir: str) -> Dict[str, bool]:
    """item id -> correct, from a run's samples.jsonl (error rows count as wrong, as the runner scores them)."""
    from prunevid.harness.results import RunWriter
    return {r["id"]: bool(r.get("correct")) for r in RunWriter(output_dir).read_samples()}


def summary(correct: Dict[str, bool]) -> dict:
    """Accuracy (percent) with its 95% Wilson interval (percent), overall and per task (item ids are
    ``task/index``); ``correct`` and ``n`` per group too."""
    def acc(ids: List[str]) -> dict:
        k = sum(correct[i] for i in ids)
        return {"accuracy": 100.0 * k / len(ids), "n": len(ids), "correct": k,
                "ci95": list(statistics.wilson_interval(k, len(ids)))}
    tasks = {t: [i for i in correct if i.split("/")[0] == t] for t in S.TASKS}
    return {**acc(sorted(correct)), "per_task": {t: acc(ids) for t, ids in tasks.items() if ids}}


def verdict(runs: Dict[str, Dict[str, bool]]) -> dict:
    """The rule applied to the runs' per-item outcomes (name -> {item id: correct}; names as ``RUNS``): every
    check with its measured value and whether it holds, and ``ships`` (all hold)."""
    chance = {t: 100.0 * c for t, c in S.CHANCE.items()}
    none, black = summary(runs["none"]), summary(runs["black"])
    checks = [{"check": f"unpruned >= {UNPRUNED_MIN:.0f}%", "value": none["accuracy"],
               "holds": none["accuracy"] >= UNPRUNED_MIN}]
    for t, s in none["per_task"].items():
        checks.append({"check": f"unpruned {t} >= chance + {TASK_MARGIN:.0f}", "value": s["accuracy"] - chance[t],
                       "holds": s["accuracy"] - chance[t] >= TASK_MARGIN})
    direction = none["per_task"].get("moving_direction", {}).get("accuracy", float("nan"))
    checks.append({"check": f"unpruned moving_direction >= {DIRECTION_MIN:.0f}%", "value": direction,
                   "holds": direction >= DIRECTION_MIN})
    for t, s in black["per_task"].items():
        lo, hi = statistics.wilson_interval(s["correct"], s["n"], z=BLIND_Z)
        checks.append({"check": f"black frames {t} consistent with chance (family-wise 95% interval)",
                       "value": s["accuracy"] - chance[t], "ci95": [lo - chance[t], hi - chance[t]],
                       "holds": lo <= chance[t] <= hi})
    pooled_chance = sum(chance[t] * s["n"] for t, s in black["per_task"].items()) / black["n"]
    checks.append({"check": f"black frames pooled within {BLIND_MAX_GAP:.0f} of chance",
                   "value": black["accuracy"] - pooled_chance,
                   "holds": abs(black["accuracy"] - pooled_chance) <= BLIND_MAX_GAP})
    paired = {}
    for pos in POSITIONS:
        c = statistics.compare_paired(runs[f"oracle-{pos}"], runs[f"random-{pos}"])
        paired[pos] = c
        checks.append({"check": f"oracle - random at {RETAIN:.0%} ({pos}) >= {ORACLE_GAIN:.0f}, interval > 0",
                       "value": c["diff"], "ci95": c["diff_ci95"],
                       "holds": c["diff"] >= ORACLE_GAIN and c["diff_ci95"][0] > 0})
    # reported only: the issue's own form of the black-frames check (too loose to judge at 50 items per task, see the
    # module docstring; on the 300-per-task test split it is the done-when's wording)
    issue_form = {t: s["accuracy"] - chance[t] for t, s in black["per_task"].items()}
    reported = {"black frames within 5 of chance on every task (issue 24's wording)": {
        "value": max(abs(v) for v in issue_form.values()) if issue_form else float("nan"),
        "per_task": issue_form, "holds": all(abs(v) <= BLIND_MAX_GAP for v in issue_form.values())}}
    for pos in POSITIONS:                                        # reported only: the question-focused ceiling
        if f"question-{pos}" in runs:
            paired[f"question-{pos}"] = statistics.compare_paired(runs[f"question-{pos}"], runs[f"random-{pos}"])
    return {"checks": checks, "ships": all(c["holds"] for c in checks), "reported": reported,
            "summaries": {name: summary(o) for name, o in runs.items()}, "paired": paired}


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="the candidate's exported model folder (<run>/model)")
    ap.add_argument("--benchmark", default=BENCHMARK, choices=BENCHMARKS + TEST_SPLITS,
                    help=f"the validation split the rule runs on (default {BENCHMARK}); a test split "
                         f"({', '.join(TEST_SPLITS)}) only with --test-split")
    ap.add_argument("--test-split", action="store_true",
                    help="confirm that this is the one test-split run that follows the shipping decision")
    ap.add_argument("--work", default=None,
                    help="run folders and check.json (default: <model>/../check-<version>-val, e.g. check-v2-val)")
    ap.add_argument("--data-root", default=None, help="benchmark data root (default: $PRUNEVID_DATA or ./DATAS)")
    ap.add_argument("--limit", type=int, default=None, help="the first N items only (a look, not the rule)")
    args = ap.parse_args(argv)
    if (args.benchmark in TEST_SPLITS) != args.test_split:
        ap.error(f"--benchmark {args.benchmark}: a test split needs --test-split (run once, after the shipping "
                 "decision), a validation split must not have it")
    from prunevid.harness import runner
    work = args.work or os.path.join(os.path.dirname(os.path.abspath(args.model)),
                                     "check-" + args.benchmark.replace("synthetic-", ""))
    runs = {}
    for name, (method, params, options) in RUNS.items():
        out = os.path.join(work, name)
        # the protocol and precision the demo model is shipped with (a trainer's export carries no
        # prunevid_defaults.json to say so; the runner would load a checkpoint folder in bfloat16 under the official
        # protocol; the checks of trial 16 up to its shipped state ran so, 2 of 350 answers off the shipped float32)
        res = runner.evaluate(benchmark=args.benchmark, model=args.model, method=method, params=params, limit=args.limit,
                              data_root=args.data_root, output_dir=out, protocol_options=options, progress=True,
                              protocol="official", frames=S.NUM_FRAMES, dtype="float32")
        runs[name] = outcomes(out)
        print(f"[check] {name}: {res['metrics']['accuracy']:.1f}% on {len(runs[name])} items", flush=True)
    v = verdict(runs)
    v.update(model=os.path.abspath(args.model), limit=args.limit, benchmark=args.benchmark)
    with open(os.path.join(work, "check.json"), "w") as f:
        json.dump(v, f, indent=1)
    for c in v["checks"]:
        extra = f" [{c['ci95'][0]:+.1f}, {c['ci95'][1]:+.1f}]" if "ci95" in c else ""
        print(f"  {'ok  ' if c['holds'] else 'FAIL'} {c['check']}: {c['value']:+.1f}{extra}")
    for name, c in v["reported"].items():
        print(f"  (reported) {'holds' if c['holds'] else 'fails'}: {name}: largest gap {c['value']:.1f}")
    for name in REPORTED_ONLY:
        if name in v["paired"]:
            c = v["paired"][name]
            print(f"  (reported) oracle focus=question - random at {RETAIN:.0%} ({name.split('-')[1]}): "
                  f"{c['diff']:+.1f} [{c['diff_ci95'][0]:+.1f}, {c['diff_ci95'][1]:+.1f}]")
    print(f"[check] {'ships' if v['ships'] else 'does not ship'} by the rule"
          + (" (a --limit look: not the rule's 350 items)" if args.limit else "") + f"; record: {work}/check.json")
    return 0 if v["ships"] else 1


if __name__ == "__main__":
    sys.exit(main())
