"""``tract-eval`` command line. Each feature module registers its own subcommands."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback

from . import __version__
from .errors import UserError
from .redaction import install_log_redaction

# Modules exposing ``register(subparsers)``; each subcommand sets ``func(args) -> int``.
# Keep their top-level imports light: heavy libraries load inside the command.
COMMAND_MODULES = [
    "tract_eval.commands",
    "tract_eval.reports.cli",
    "tract_eval.experiments.cli",
    "tract_eval.training.cli",
    "tract_eval.serve.cli",
]

USER_ERROR_STATUS = 2  # argparse's status for usage errors: every mistake a user can fix exits with it
# -q turns off the progress bars of the libraries that fetch and load models and data: transformers converts
# GGUF under plain tqdm (TQDM_DISABLE, read when tqdm is imported), loads weights and downloads under the
# hub's bars (HF_HUB_DISABLE_PROGRESS_BARS, which transformers follows), datasets has its own switch
QUIET_ENVIRONMENT = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


def _add_verbosity(parser: argparse.ArgumentParser, top: bool) -> None:
    """``-v``/``-q`` on the top parser and on every subcommand, so ``tract-eval run ... -v`` works too.
    On subcommands the default is SUPPRESS, so an unused flag there does not reset the top-level one."""
    default = 0 if top else argparse.SUPPRESS
    parser.add_argument("-v", "--verbose", action="count", default=default,
                        help="more logging (-vv: debug); user errors show their traceback")
    parser.add_argument("-q", "--quiet", action="count", default=default, help="errors only, no progress")


def _subcommand_parsers(parser: argparse.ArgumentParser):
    for action in parser._actions:  # argparse keeps subparsers here; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                yield sub
                yield from _subcommand_parsers(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tract-eval",
        description="Measure, compare and train LLM-as-a-judge models (TRACT and its baselines).",
    )
    parser.add_argument("--version", action="version", version=f"tract-eval {__version__}")
    _add_verbosity(parser, top=True)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and (name == exc.name or name.startswith(exc.name + ".")):  # feature not in this build
                continue
            raise
        module.register(subparsers)
    for sub in _subcommand_parsers(parser):
        _add_verbosity(sub, top=False)
    return parser


def _split_raw_command(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str] | None]:
    """Subcommands marked ``raw_command`` (``train``: its flags are generated from TrainConfig, which imports
    transformers, so only when it runs) get everything after their name unparsed."""
    for index, token in enumerate(argv):
        if token.startswith("-"):
            continue
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices.get(token)
        if sub is not None and sub.get_default("raw_command"):
            return argv[: index + 1], argv[index + 1:]
        break
    return argv, None


def _log_level(verbose: int, quiet: int) -> int:
    if quiet:
        return logging.ERROR
    return {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)


def _silence_progress_bars() -> None:
    """Before the command imports them (the command line imports no heavy library before this), the
    environment switches suffice; libraries already imported in this process are switched off directly."""
    os.environ.update(QUIET_ENVIRONMENT)
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    head, raw = _split_raw_command(parser, argv)
    args = parser.parse_args(head)
    if raw is not None:
        args.raw_args = raw
    logging.basicConfig(level=_log_level(args.verbose, args.quiet), format="%(levelname)s %(name)s: %(message)s")
    if args.quiet:
        _silence_progress_bars()
    install_log_redaction()
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"tract-eval {args.command}: error: {exc}", file=sys.stderr)
        return USER_ERROR_STATUS
    except BrokenPipeError:  # `tract-eval list judges | head`: the reader left, nothing is wrong
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps Python's exit-time flush quiet
        return 0
    except KeyboardInterrupt:
        print("interrupted; finished samples are saved, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
