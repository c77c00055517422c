"""Argument registration the subcommand modules share (argparse only: imported when the parser is built)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable


def add_command(subparsers, name: str, func: Callable, help: str, description: str | None = None,
                **kwargs) -> argparse.ArgumentParser:
    """A subcommand whose ``args.func`` is ``func``."""
    parser = subparsers.add_parser(name, help=help, description=description, **kwargs)
    parser.set_defaults(func=func)
    return parser


def add_data_options(parser: argparse.ArgumentParser, limit_help: str = "first N rows per benchmark") -> None:
    """Where the benchmark files are, and how many rows to take."""
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder with the benchmark files (else $TRACT_EVAL_DATA_DIR, else upstream)")
    if limit_help:
        parser.add_argument("--limit", type=int, default=None, help=limit_help)


def add_output_file(parser: argparse.ArgumentParser, help: str = "write here instead of stdout") -> None:
    parser.add_argument("--out", help=help)


def add_cards_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cards", action="append", default=[], metavar="DIR",
                        help="a folder of your own judge/benchmark cards, searched before the built-in ones (repeatable)")


def use_cards(args) -> None:
    """Search the ``--cards`` folders (before the built-in cards) from here on."""
    from .cards import add_card_dir

    for folder in getattr(args, "cards", None) or []:
        add_card_dir(folder)
