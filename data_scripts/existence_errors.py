#!/usr/bin/env python
"""Where a demo model's object-existence answers go wrong: its accuracy on one run folder's existence items, split
by the truth and, for a "no", by what the video holds instead of the asked object (an object of the asked colour,
of the asked shape, both kinds, or neither). A model that reads colour alone answers "yes" whenever the colour is
there: right on every "yes", wrong on every "no" whose video holds the colour.

    python data_scripts/existence_errors.py runs/eval_v3_4000/check-v3-val/none --version 3 --split val

The run folder is one of the runner's (``samples.jsonl``) on a synthetic split; the split's items are regenerated
from their seed (no data folder needed).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from prunevid import synthetic as S  # noqa: E402
from prunevid.synthetic.training.labels import question_object  # noqa: E402


def near_kind(sample) -> str:
    """What an existence video holds of the asked object's parts: "colour", "shape", "colour and shape" (objects
    of each kind, none of both), "neither"; "asked" when the asked object itself is there."""
    c_index, s_index = question_object(sample.item)           # the trainer's reading of the question
    colour, shape = S.COLOR_NAMES[c_index], S.SHAPES[s_index]
    has_c = has_s = False
    for t in sample.video.tracks:
        c, s = colour in set(t.color), t.shape == shape
        if c and s:
            return "asked"
        has_c, has_s = has_c or c, has_s or s
    return {(True, True): "colour and shape", (True, False): "colour", (False, True): "shape"}.get((has_c, has_s),
                                                                                                   "neither")


def existence_breakdown(rows: dict, version: int, split: str, n_per_task: int = None) -> dict:
    """{(truth, what the video holds): [correct, total]} over the existence items of ``rows`` (id -> sample row)."""
    seed = S.split_seeds(version)[split]
    n = n_per_task or S.default_n_per_task(version)[split]
    out = collections.defaultdict(lambda: [0, 0])
    for _, i, sample in S.split_items(seed, n, tasks=("object_existence",), version=version):
        row = rows.get(f"object_existence/{i}")
        if row is None or row.get("error"):
            continue
        key = (sample.item["answer"], near_kind(sample))
        out[key][0] += bool(row["correct"])
        out[key][1] += 1
    return dict(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a runner output folder holding samples.jsonl")
    ap.add_argument("--version", type=int, default=3, choices=list(S.VERSIONS))
    ap.add_argument("--split", default="val", choices=("train", "val", "test"))
    args = ap.parse_args(argv)
    path = os.path.join(args.run, "samples.jsonl")
    if not os.path.isfile(path):
        raise SystemExit(f"no samples.jsonl in {args.run}")
    with open(path) as f:
        rows = {r["id"]: r for r in map(json.loads, f) if r.get("category") == "object_existence"}
    if not rows:
        raise SystemExit(f"{path} has no object_existence items")
    n = max(int(k.rpartition("/")[2]) for k in rows) + 1
    table = existence_breakdown(rows, args.version, args.split, n_per_task=n)
    print("| truth | the video holds | correct | items | accuracy % |\n|---|---|---|---|---|")
    for (truth, kind), (ok, total) in sorted(table.items()):
        print(f"| {truth} | {kind} | {ok} | {total} | {100 * ok / total:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
