#!/usr/bin/env python
"""How much a token selector can gain in a synthetic world, with no model: the ideal reader
(``prunevid.synthetic.evidence_survives``) on the kept sets of random keep and of the object-first oracle.

    python data_scripts/ideal_reader.py                        # versions 2 and 3, 40 items per task, 25% and 10%
    python data_scripts/ideal_reader.py --versions 3 --n-per-task 100 --retain 0.25

Prints a markdown table (accuracy % per task and the task mean). The ideal reader reads every kept token perfectly
and answers whenever the least evidence its question allows survives, so ``oracle - random`` is what the world
lets a selector gain at that budget; a model gains that much at most (data_scripts/README.md, trials 15-16).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from prunevid import synthetic as S  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", default="2,3", help="comma-separated world versions (default 2,3)")
    ap.add_argument("--n-per-task", type=int, default=40, help="items per task (default 40)")
    ap.add_argument("--retain", type=float, action="append", default=None,
                    help="retained share (repeatable; default 0.25 and 0.10)")
    ap.add_argument("--seed", type=int, default=999, help="item streams item_rng(seed, task, i) (default 999)")
    args = ap.parse_args(argv)
    try:
        versions = [int(v) for v in args.versions.split(",")]
        for v in versions:
            S.split_seeds(v)
    except ValueError as e:
        ap.error(f"--versions {args.versions!r}: {e}")
    retains = args.retain or [0.25, 0.10]
    if not all(0 < r <= 1 for r in retains) or args.n_per_task < 1:
        ap.error("--retain must be in (0, 1] and --n-per-task >= 1")
    print("| retained | selector | " + " | ".join(t.replace("_", " ") for t in S.TASKS) + " | all |")
    print("|---" * (len(S.TASKS) + 3) + "|")
    for r in retains:
        for v in versions:
            acc = S.ideal_accuracy(v, args.n_per_task, r, seed=args.seed)
            for sel in ("random", "oracle"):
                row = acc[sel]
                print(f"| {r:.0%} | {sel}, version {v} | " + " | ".join(f"{row[t]:.1f}" for t in S.TASKS)
                      + f" | **{row['all']:.1f}** |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
