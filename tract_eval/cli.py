"""``tract-eval`` command line. Each feature module registers its own subcommands."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .redaction import install_log_redaction

# Modules exposing ``register(subparsers)``; each subcommand sets ``func(args) -> int``.
# Keep their top-level imports light: heavy libraries load inside the command.
COMMAND_MODULES = [
    "tract_eval.commands",
    "tract_eval.reports.cli",
    "tract_eval.training.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tract-eval",
        description="Measure, compare and train LLM-as-a-judge models (TRACT and its baselines).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and (name == exc.name or name.startswith(exc.name + ".")):  # feature not in this build
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    install_log_redaction()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; finished samples are saved, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
