"""``python -m prunevid <command>``: one argparse program; each command lives in its own module.

A command module provides ``add_parser(subparsers)`` (which sets ``func``) and is listed in ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# (module, command) in the order ``--help`` shows them; the first is the kit's main job.
COMMANDS = [
    "prunevid.demo",
    "prunevid.runner",
    "prunevid.flops_cli",
    "prunevid.bench",
    "prunevid.data",
    "prunevid.benchmarks.egoschema",
    "prunevid.report",
]


def parse_set(pairs) -> dict:
    """``--set key=value`` pairs -> dict; values parsed as int, float, bool or None when they look like one."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        out[key.strip()] = parse_value(raw.strip())
    return out


def parse_value(raw: str):
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m prunevid",
                                     description="PruneVid Kit: visual-token pruning for video LLMs.")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
