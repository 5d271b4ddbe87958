#!/usr/bin/env python
"""Generate the synthetic MVBench-format benchmark (``prunevid.synthetic``).

    python data_scripts/make_synthetic.py --root DATAS --split test             # DATAS/Synthetic/{json,video,meta.json}
    python data_scripts/make_synthetic.py --root DATAS --split train --n-per-task 500
    python data_scripts/make_synthetic.py --root DATAS --split test --check     # verify the checksum only
    python data_scripts/make_synthetic.py --root DATAS --version 2             # DATAS/Synthetic-v2 (2,100 items)
    python data_scripts/make_synthetic.py --root DATAS --version 3             # DATAS/Synthetic-v3 (brief evidence)

Each split has a fixed default seed (version 1: test 20261124, val 777, train 1; version 2: test 20270124,
val 7772, train 2; version 3: test 20270306, val 7773, train 3); ``--seed`` overrides it. The split is
deterministic from its seed: ``meta.json`` records a checksum of the JSON items and raw frames, and
``--check`` regenerates it in memory and compares.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from prunevid import synthetic  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=os.environ.get("PRUNEVID_DATA", "DATAS"), help="data root (default $PRUNEVID_DATA or ./DATAS)")
    ap.add_argument("--split", default="test", help="test (DATAS/Synthetic), val or train (DATAS/Synthetic/<split>)")
    ap.add_argument("--n-per-task", type=int, default=None,
                    help="items per task (default: test/val 50, train 500; versions 2 and 3: test 300)")
    ap.add_argument("--seed", type=int, default=None, help="override the split's default seed")
    ap.add_argument("--tasks", default=",".join(synthetic.TASKS), help="comma-separated task names")
    ap.add_argument("--codec", default="libx264", choices=["libx264", "mpeg4"])
    ap.add_argument("--version", type=int, default=1, choices=list(synthetic.VERSIONS),
                    help="benchmark version: 1 (DATAS/Synthetic, the default), 2 (DATAS/Synthetic-v2) or 3 "
                         "(DATAS/Synthetic-v3)")
    ap.add_argument("--check", action="store_true", help="only verify an existing split's checksum")
    args = ap.parse_args(argv)
    tasks = tuple(t for t in args.tasks.split(",") if t)
    unknown = [t for t in tasks if t not in synthetic.TASKS]
    if unknown:
        ap.error(f"unknown tasks {unknown}; known: {list(synthetic.TASKS)}")
    if args.check:
        path = os.path.join(synthetic.split_dir(args.root, args.split, args.version), "meta.json")
        with open(path) as f:
            meta = json.load(f)
        got = synthetic.split_checksum(meta["seed"], meta["n_per_task"], tuple(meta["counts"]),
                                       version=int(meta.get("generator_version", 1)))
        ok = got == meta["checksum"]
        print(f"{path}: checksum {'OK' if ok else 'MISMATCH'} ({got})")
        return 0 if ok else 1
    t0 = time.time()
    meta = synthetic.write_split(args.root, args.split, n_per_task=args.n_per_task, seed=args.seed, tasks=tasks,
                                 codec=args.codec, log=print, version=args.version)
    dt = time.time() - t0
    print(f"wrote {meta['total']} items ({args.split}, seed {meta['seed']}) to "
          f"{synthetic.split_dir(args.root, args.split, args.version)} in {dt:.1f} s "
          f"({1000 * dt / max(meta['total'], 1):.1f} ms/item); "
          f"checksum {meta['checksum'][:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
