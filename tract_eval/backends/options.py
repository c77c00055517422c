"""Command-line flags for backend options; the judge card keeps them under ``backend_options``."""
from __future__ import annotations

import argparse

from ..errors import ConfigError
from . import BUILTIN_DECLARATIONS

# option -> its flag, generated from the built-in backends' declarations (None = not given, keep the card's)
_FLAGS = {flag.option: flag for declaration in BUILTIN_DECLARATIONS for flag in declaration.flags()}


def flag_for(option: str) -> str:
    """The flag that sets a backend option, or how a card names it when no flag does."""
    return _FLAGS[option].flag if option in _FLAGS else f"backend option {option}"


def add_backend_flags(parser: argparse.ArgumentParser, renamed: dict[str, str] | None = None) -> None:
    """``renamed``: option -> another flag for it, where the command uses the usual one for itself
    (``serve --api-key-env`` is the server's own key)."""
    group = parser.add_argument_group("backend options (default: the card's backend_options)")
    for option, declared in _FLAGS.items():
        flag = (renamed or {}).get(option, declared.flag)
        group.add_argument(flag, dest=f"backend_{option}", metavar=option.upper(), type=declared.kind, default=None,
                           help=declared.help)
    group.add_argument("--model-args", dest="model_args", default=None, metavar="KEY=VALUE,...",
                       help="transformers: from_pretrained options, values read as YAML, e.g. revision=main,"
                            "trust_remote_code=true,attn_implementation=sdpa,device_map=auto,load_in_4bit=true")
    group.add_argument("--backend-option", dest="backend_extra", action="append", default=[], metavar="KEY=VALUE",
                       help="any other backend option, value read as YAML (repeatable), "
                            "e.g. engine_options={enforce_eager: true}")


def backend_options_from_args(args: argparse.Namespace) -> dict:
    import yaml

    options = {o: getattr(args, f"backend_{o}") for o in _FLAGS if getattr(args, f"backend_{o}", None) is not None}
    for item in getattr(args, "backend_extra", []) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--backend-option takes KEY=VALUE, not {item!r}")
        options[key.strip()] = yaml.safe_load(value)
    if getattr(args, "model_args", None):
        options["model_args"] = parse_key_values(args.model_args, "--model-args")
    return options


def parse_key_values(text: str, flag: str) -> dict:
    """``a=1,b=true,c=main`` -> {"a": 1, "b": True, "c": "main"} (values read as YAML scalars)."""
    import yaml

    out = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} takes KEY=VALUE pairs separated by commas, not {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"{flag} {key.strip()}: cannot read {value!r}") from None
    return out
