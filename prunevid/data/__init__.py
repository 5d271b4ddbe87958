"""Data scripts: download each benchmark from its Hugging Face dataset, unpack, convert to the official
``DATAS/`` layout, verify, report. ``python -m prunevid data <benchmark> --root DATAS`` or
``python data_scripts/<benchmark>.py --root DATAS``.

Each module (``mvbench``, ``videomme``, ``egoschema``, ``vcgbench``) has ``prepare(root, ...) -> Report``.
Dataset ids are options (``--repo-id``): they have moved before (lmms-lab -> lmms-eval).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

SCRIPTS = ("mvbench", "videomme", "egoschema", "vcgbench")


def module(name: str):
    if name not in SCRIPTS:
        raise ValueError(f"no data script for {name!r}; available: {list(SCRIPTS)} (the synthetic benchmark is "
                         f"generated, not downloaded)")
    return importlib.import_module(f"{__name__}.{name}")


def add_arguments(p: argparse.ArgumentParser, with_benchmark: bool = True) -> None:
    if with_benchmark:
        p.add_argument("benchmark", choices=list(SCRIPTS), help="which benchmark to prepare")
    p.add_argument("--root", default=os.environ.get("PRUNEVID_DATA") or "DATAS",
                   help="data root receiving the official layout (default: $PRUNEVID_DATA or ./DATAS)")
    p.add_argument("--repo-id", default=None, help="Hugging Face dataset id (default: the benchmark's usual one)")
    p.add_argument("--revision", default=None, help="dataset revision (branch, tag or commit) to pin")
    p.add_argument("--download-dir", default=None, help="where the snapshot goes (default: ROOT/_downloads/<name>)")
    p.add_argument("--hub-mirror", default=None,
                   help="a local folder laid out as <org>/<name>/... used instead of the Hub "
                        "(default: $PRUNEVID_HUB_MIRROR; unset = the real Hub)")
    p.add_argument("--skip-download", action="store_true", help="convert what is already in the download dir")
    p.add_argument("--verify-only", action="store_true", help="only check ROOT (files, counts, videos)")
    p.add_argument("--quick", action="store_true", help="check that videos exist, without opening them")
    p.add_argument("--no-count-check", action="store_true", help="item counts differing from the known totals are "
                                                                    "reported but do not fail")
    p.add_argument("--subset-answers", default=None, help="egoschema: GitHub subset_answers.json ({q_uid: index})")


def run_prepare(args, name: str) -> int:
    from .common import DataError
    mod = module(name)
    kw = dict(repo_id=args.repo_id or mod.DEFAULT_REPO, download_dir=args.download_dir, mirror=args.hub_mirror,
              skip_download=args.skip_download, verify_only=args.verify_only, open_check=not args.quick,
              check_counts=not args.no_count_check)
    if args.revision:
        kw["revision"] = args.revision
    if name == "egoschema":
        kw["subset_answers"] = args.subset_answers
    try:
        rep = mod.prepare(args.root, **kw)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(rep.text())
    if os.path.isdir(rep.root):
        print(f"[data] report written to {rep.save(rep.root)}")
    return 0 if rep.ok else 1


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="download + convert + verify a benchmark into the official DATAS layout",
                       description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(func=lambda args: run_prepare(args, args.benchmark))


def script_main(name: str, argv=None) -> int:
    """Entry of ``data_scripts/<name>.py``."""
    p = argparse.ArgumentParser(prog=f"data_scripts/{name}.py", description=module(name).__doc__)
    add_arguments(p, with_benchmark=False)
    return run_prepare(p.parse_args(argv), name)
