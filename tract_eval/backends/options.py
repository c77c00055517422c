"""Command-line flags for backend options; the judge card keeps them under ``backend_options``."""
from __future__ import annotations

import argparse

from ..errors import ConfigError

# flag -> backend option (None = not given, keep the card's value)
_FLAGS = {
    "base_url": ("--base-url", str, "openai: server URL, e.g. http://127.0.0.1:8000/v1"),
    "api_key_env": ("--api-key-env", str, "openai: environment variable holding the API key (never logged)"),
    "api_model": ("--api-model", str, "openai: model name sent to the server (default: the one it serves)"),
    "mode": ("--openai-mode", str, "openai: score readout 'continue' (raw-prompt servers) or 'single' (chat APIs)"),
    "concurrency": ("--concurrency", int, "openai: requests in flight"),
    "max_retries": ("--max-retries", int, "openai: retries per request (429/5xx/timeouts/dropped connections)"),
    "timeout": ("--request-timeout", float, "openai: seconds per request"),
    "tensor_parallel_size": ("--tensor-parallel-size", int, "vllm: GPUs one model is split over"),
}


def flag_for(option: str) -> str:
    """The flag that sets a backend option, or how a card names it when no flag does."""
    return _FLAGS[option][0] if option in _FLAGS else f"backend option {option}"


def add_backend_flags(parser: argparse.ArgumentParser, renamed: dict[str, str] | None = None) -> None:
    """``renamed``: option -> another flag for it, where the command uses the usual one for itself
    (``serve --api-key-env`` is the server's own key)."""
    group = parser.add_argument_group("backend options (default: the card's backend_options)")
    for option, (flag, kind, help_text) in _FLAGS.items():
        flag = (renamed or {}).get(option, flag)
        group.add_argument(flag, dest=f"backend_{option}", metavar=option.upper(), type=kind, default=None,
                           help=help_text)
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
