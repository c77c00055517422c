"""--model-args and backend options: parsed, checked and refused by name before any model loads; hub offline."""
from __future__ import annotations

import importlib.util

import pytest

from tract_eval.backends import backend_option_names, check_backend_options
from tract_eval.backends.options import parse_key_values
from tract_eval.cli import main
from tract_eval.errors import ConfigError
from tract_eval.models import ModelSource, ModelUnavailable, check_model_args, load_kwargs, resolve_model


def test_model_args_parse_and_become_from_pretrained_kwargs():
    args = parse_key_values("revision=v1.0,trust_remote_code=true,attn_implementation=sdpa,device_map=auto",
                            "--model-args")
    assert args == {"revision": "v1.0", "trust_remote_code": True, "attn_implementation": "sdpa", "device_map": "auto"}
    kwargs = load_kwargs(ModelSource("x", "x", gguf_file="m.gguf"), args)
    assert kwargs == {"gguf_file": "m.gguf", **args}
    with pytest.raises(ConfigError, match="--model-args takes KEY=VALUE"):
        parse_key_values("revision", "--model-args")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['revison'\]; known: revision, trust_remote_code"):
        check_model_args({"revison": "main"})


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed here")
def test_quantization_needs_bitsandbytes():
    with pytest.raises(ConfigError, match="need bitsandbytes"):
        check_model_args({"load_in_4bit": True})


def test_backend_options_are_checked_against_the_backend():
    assert backend_option_names("transformers") == ["device", "dtype", "model_args"]
    assert {"base_url", "concurrency", "mode"} <= set(backend_option_names("openai"))
    with pytest.raises(ConfigError, match=r"unknown transformers backend option\(s\) \['base_url'\]; "
                                          r"known: device, dtype, model_args"):
        check_backend_options("transformers", {"base_url": "http://x"})
    with pytest.raises(KeyError, match="unknown backend 'tpu'"):
        check_backend_options("tpu", {})


def test_cli_refuses_bad_model_options_before_loading(capsys, monkeypatch):
    from tract_eval.judges import base as judge_base

    monkeypatch.setattr(judge_base, "create_backend", lambda *a, **k: pytest.fail("a model was about to load"))
    assert main(["run", "--judge", "rail", "--bench", "vicuna", "--model-args", "revison=main"]) == 2
    assert "unknown option(s) ['revison']" in capsys.readouterr().err
    assert main(["run", "--judge", "rail", "--bench", "vicuna", "--backend-option", "concurrency=2"]) == 2
    assert "unknown transformers backend option(s) ['concurrency']" in capsys.readouterr().err


def test_hub_offline_is_honoured_without_a_socket(monkeypatch):
    from tract_eval import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_offline() and not hub.hub_reachable()
    with pytest.raises(ModelUnavailable, match="hub is unreachable \\(or HF_HUB_OFFLINE is set\\)"):
        resolve_model("no-such-org/no-such-model-xyz")


# -- the reference's precision (issue 18, point 6): named options whose refusals say what they need ------------

def test_four_bit_readout_says_what_it_needs():
    """TRACT inference.py:233-237 reads RAIL from AutoModelForCausalLM.from_pretrained(..., load_in_4bit=True);
    tract-eval offers it as --model-args load_in_4bit=true, and where it cannot run says why."""
    import torch

    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(ConfigError, match="need bitsandbytes: pip install bitsandbytes, on a machine with a CUDA GPU"):
            check_model_args({"load_in_4bit": True})
    elif not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="need a CUDA GPU"):
            check_model_args({"load_in_4bit": True})
    else:
        assert check_model_args({"load_in_4bit": True}) == {"load_in_4bit": True}


def test_vllm_fp8_says_what_it_needs():
    """TRACT generation_utils.py:35-36 samples CoTs with vLLM quantization='fp8' (a6000_parameters)."""
    import torch

    from tract_eval.backends import check_vllm_quantization

    check_vllm_quantization({"engine_options": {"enforce_eager": True}})  # no quantization asked: nothing to check
    if torch.cuda.is_available():
        check_vllm_quantization({"engine_options": {"quantization": "fp8"}})
    else:
        with pytest.raises(ConfigError, match="quantization='fp8' needs a CUDA GPU"):
            check_vllm_quantization({"engine_options": {"quantization": "fp8"}})


def test_every_copy_of_one_gguf_shares_one_converted_folder(tmp_path):
    """Each virtualenv installs its own copy of the embedded GGUF: the conversion cache is keyed on the
    content, so copies (other path, other modification time) share one folder and other content does not."""
    import os

    from tract_eval.conversion import content_key

    first, copy, other = tmp_path / "a.gguf", tmp_path / "b" / "a.gguf", tmp_path / "c.gguf"
    copy.parent.mkdir()
    first.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    copy.write_bytes(first.read_bytes())
    os.utime(copy, (1_000_000, 1_000_000))
    other.write_bytes(first.read_bytes()[:-1] + b"x")
    assert content_key(first) == content_key(copy) != content_key(other)
