"""``python -m prunevid <command>``: one argparse program; each command lives in its own module.

A command module provides ``add_parser(subparsers)`` (which sets ``func``) and is listed in ``COMMANDS``.
Bad input is one ``error: ...`` line on stderr and exit status 2 (a ``ValueError`` or ``FileNotFoundError``
raised by the command); Ctrl-C and SIGTERM are one line too (exit 130 / 143): a command that was interrupted
mid-run says how far it got (``results.Interrupted``), any other just that it was interrupted.
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
    "prunevid.course",
]


def parse_set(pairs, flag: str = "--set") -> dict:
    """``--set key=value`` pairs -> dict; values parsed as int, float, bool or None when they look like one. A pair
    without ``=`` is a ``ValueError`` (one ``error:`` line) naming ``flag``."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"{flag} expects key=value, got {pair!r}")
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


def check_device(device: str) -> None:
    """A device this machine cannot use is a one-line error (torch raises an AssertionError deep in ``.to()``)."""
    import torch
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown --device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA device is available (torch {torch.__version__}"
                             f"{' is a CPU build' if torch.version.cuda is None else ' sees no GPU'}); "
                             f"use --device cpu, or install a CUDA build of torch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")


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
    from .results import Interrupted, signal_name, sigterm_as_interrupt
    try:
        with sigterm_as_interrupt():            # SIGTERM ends a command like Ctrl-C: its cleanup runs
            return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:                    # a run that wrote what it had: "interrupted: 11/60 done; ..."
        if str(e):
            print(str(e), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        print(f"interrupted ({signal_name(e)})", file=sys.stderr)
        return 143 if signal_name(e) == "SIGTERM" else 130


if __name__ == "__main__":
    sys.exit(main())
