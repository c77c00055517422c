"""GGUF -> plain safetensors folder, cached: for engines that cannot read GGUF (vLLM on CPU), and for
transformers, which loads the same float32 weights and tokenizer, bit for bit, from the folder in a
fraction of the time it takes to dequantise the GGUF again (the embedded model: ~3 s instead of ~18 s).

    python -m tract_eval.conversion [MODEL.gguf] [--cache-dir DIR]    # prints the folder

With no file it converts the embedded SmolLM2 GGUF. The weights are dequantised by transformers
(``GgufConfig(dequantize=True)``), copied into a fresh model of the same config and saved with the
tokenizer; a folder is reused for every copy of the same GGUF (keyed on its content).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import logging
import os
import shutil
from pathlib import Path

from .models import ModelSource, load_tokenizer, resolve_model

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("TRACT_EVAL_CACHE", "~/.cache/tract-eval")).expanduser() / "gguf-safetensors"


def content_key(gguf: Path) -> str:
    """The GGUF's content hash (16 hex digits): every installed copy of one file (each virtualenv has its
    own) shares one converted folder. Hashed once per process and file version (~0.3 s for 100 MB)."""
    stat = Path(gguf).stat()
    return _content_key(str(Path(gguf).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _content_key(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def safetensors_from_gguf(source: ModelSource, cache_dir: str | Path | None = None) -> Path:
    """The folder holding ``source``'s GGUF as float32 safetensors (converted once, then reused)."""
    if not source.gguf_file:
        raise ValueError(f"{source.spec} is not a GGUF model")
    gguf = Path(source.path) / source.gguf_file
    out = Path(cache_dir or default_cache_dir()) / f"{gguf.stem}-{content_key(gguf)}"
    if (out / "config.json").is_file():
        return out

    out.parent.mkdir(parents=True, exist_ok=True)  # an unwritable cache fails here, before the long load
    import torch
    from transformers import AutoModelForCausalLM, GgufConfig

    log.info("converting %s to safetensors in %s (once)", gguf, out)
    tokenizer = load_tokenizer(source)
    quantized = AutoModelForCausalLM.from_pretrained(
        source.path, gguf_file=source.gguf_file, dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True))
    # a fresh model of the same config carries no GGUF quantization settings into config.json
    model = AutoModelForCausalLM.from_config(quantized.config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    if unexpected or [k for k in missing if k not in getattr(model, "_tied_weights_keys", {})]:
        raise RuntimeError(f"GGUF conversion of {gguf}: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    partial = out.with_name(out.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    try:
        partial.rename(out)  # atomic: a killed conversion never leaves a half folder behind as `out`
    except OSError:
        if not (out / "config.json").is_file():
            raise
        shutil.rmtree(partial, ignore_errors=True)  # another process finished first
    return out


def loadable_source(source: ModelSource) -> ModelSource:
    """``source`` as ``from_pretrained`` should read it: a GGUF from its cached conversion (converted on
    first use); anything else unchanged. Where the cache cannot be written, the GGUF itself, saying so."""
    if not source.gguf_file:
        return source
    try:
        folder = safetensors_from_gguf(source)
    except OSError as exc:
        log.warning("cannot cache %s as safetensors (%s); dequantising the GGUF at every load", source.gguf_file, exc)
        return source
    return dataclasses.replace(source, path=str(folder), gguf_file=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tract_eval.conversion", description=__doc__.split("\n")[0])
    parser.add_argument("gguf", nargs="?", help="a .gguf file (default: the embedded SmolLM2)")
    parser.add_argument("--cache-dir", help=f"where converted folders live (default {default_cache_dir()})")
    args = parser.parse_args(argv)
    print(safetensors_from_gguf(resolve_model(args.gguf), args.cache_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
