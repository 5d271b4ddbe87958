"""``python -m prunevid <command>``: one argparse program; each command lives in its own module.

A command module provides ``add_parser(subparsers)`` (which sets ``func``) and is listed in ``COMMANDS``; the
argument helpers the commands share (``--set`` pairs, ``--device``) are in ``prunevid.harness.cli_args``, so no command
imports this module (which imports every command).
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
    "prunevid.harness.demo",
    "prunevid.harness.runner",
    "prunevid.harness.flops_cli",
    "prunevid.harness.bench",
    "prunevid.data",
    "prunevid.benchmarks.egoschema",
    "prunevid.harness.report",
    "prunevid.harness.course",
]


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
