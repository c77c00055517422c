"""Facts declared where they live: a protocol variant declares the settings it reads, a backend its options
(score-changing or session-only), whether it loads weights and its checks. Adding either is one place:
the run identity, the unknown-option errors and the flags follow from the declaration with no other edit."""
from __future__ import annotations

import dataclasses
import inspect

import pytest

from tract_eval.backends import (BACKENDS, BUILTIN_DECLARATIONS, check_backend_options, declaration_of,
                                 loads_weights, score_backend_options)
from tract_eval.backends.declaration import JUDGE_SETTINGS, BackendDeclaration, option
from tract_eval.errors import ConfigError
from tract_eval.identity import judge_settings_identity, model_identity
from tract_eval.judge_config import JudgeConfig
from tract_eval.judges.variants import VARIANTS, CotRail, variant_type


@pytest.mark.parametrize("backend", ["transformers", "openai", "vllm"])
def test_every_builtin_backend_declares_every_option_its_constructor_takes(backend):
    cls = {"transformers": "TransformersBackend", "openai": "OpenAIBackend", "vllm": "VLLMBackend"}[backend]
    import tract_eval.backends as backends

    declaration = declaration_of(backend)
    params = inspect.signature(getattr(backends, cls).__init__).parameters
    taken = {name: p.default for name, p in params.items() if name not in ("self", "model", *JUDGE_SETTINGS)}
    declared = {f.name: f.default for f in dataclasses.fields(declaration.options)}
    assert declared == taken  # the same names and the same defaults
    assert declaration in BUILTIN_DECLARATIONS and declaration.name == backend


def test_loading_weights_is_declared():
    assert loads_weights("transformers") and loads_weights("vllm") and not loads_weights("openai")
    assert model_identity(JudgeConfig("x", backend="openai", model="m")) == {"served_model": "m"}


@pytest.fixture()
def toy_backend():
    """A backend declared in one place: its options, which score, whether it loads weights, its check."""

    @dataclasses.dataclass
    class ToyOptions:
        endpoint: str | None = option(None, session=True)
        temperature_scale: float = option(1.0)
        extras: dict | None = option(None, session_keys=("cache",))

    def check(options):
        if options.get("temperature_scale", 1.0) <= 0:
            raise ConfigError("toy: temperature_scale must be > 0")

    def factory(model=None, **options):
        raise AssertionError("never built here")

    factory.declaration = BackendDeclaration("toy", ToyOptions, loads_weights=False, check=check)
    BACKENDS.register("toy")(factory)
    yield "toy"
    BACKENDS._items.pop("toy")


def test_a_declared_backend_needs_no_other_edit(toy_backend):
    options = {"endpoint": "http://x", "temperature_scale": 2.0, "extras": {"cache": "/tmp", "beam": 4}}
    assert score_backend_options(toy_backend, options) == {"temperature_scale": 2.0, "extras": {"beam": 4}}
    config = JudgeConfig("j", backend=toy_backend, backend_options=options)
    assert judge_settings_identity(config)["backend_options"] == {"extras": {"beam": 4}, "temperature_scale": 2.0}
    moved = dataclasses.replace(config, backend_options={**options, "endpoint": "http://elsewhere"})
    assert judge_settings_identity(moved) == judge_settings_identity(config)  # session-only: same identity
    assert model_identity(config) == {"served_model": None}  # it loads no weights
    with pytest.raises(ConfigError, match=r"unknown toy backend option\(s\) \['beams'\]; known: device, dtype, "
                                          r"endpoint, extras, temperature_scale"):
        check_backend_options(toy_backend, {"beams": 2})
    with pytest.raises(ConfigError, match="temperature_scale must be > 0"):
        check_backend_options(toy_backend, {"temperature_scale": 0})


def test_a_plugin_without_a_declaration_keeps_working():
    def factory(model=None, **options):
        raise AssertionError("never built here")

    BACKENDS.register("undeclared")(factory)
    try:
        check_backend_options("undeclared", {"anything": 1})  # it checks its own options
        assert not loads_weights("undeclared")
        # its options score, except credentials and the names a built-in backend declares session-only
        assert score_backend_options("undeclared", {"beam": 4, "api_key": "k", "concurrency": 3}) == {"beam": 4}
    finally:
        BACKENDS._items.pop("undeclared")


def test_a_declared_protocol_variant_needs_no_other_edit(monkeypatch):
    class Toy(CotRail):
        """A CoT-RAIL variant that also reads the prometheus retry budget."""

        protocol = "toy-rail"
        score_settings = CotRail.score_settings + ("max_retries",)

    monkeypatch.setitem(VARIANTS, Toy.protocol, Toy)
    config = JudgeConfig("j", protocol="toy-rail")
    assert variant_type(config) is Toy and Toy.samples_text() and Toy.cuts_cot()
    identity = judge_settings_identity(config)
    assert identity["max_retries"] == 5 and identity["protocol"] == "toy-rail"
    assert set(identity) - {"max_retries"} == set(judge_settings_identity(dataclasses.replace(config, protocol="cot-rail")))
    # a setting the protocol does not read stays out
    assert judge_settings_identity(dataclasses.replace(config, verdict_parser="library")) == identity


def test_an_unknown_protocol_is_refused_naming_the_variants():
    with pytest.raises(ConfigError, match="protocol must be one of cot-rail, cot-decode, score-only-rail, "
                                          "score-only-decode, prometheus, not 'cot'"):
        variant_type(JudgeConfig("j", protocol="cot"))


def test_backend_flags_come_from_the_declarations():
    from tract_eval.backends.options import _FLAGS

    assert {o: (f.flag, f.kind, f.help) for o, f in _FLAGS.items()} == {
        "base_url": ("--base-url", str, "openai: server URL, e.g. http://127.0.0.1:8000/v1"),
        "api_key_env": ("--api-key-env", str, "openai: environment variable holding the API key (never logged)"),
        "api_model": ("--api-model", str, "openai: model name sent to the server (default: the one it serves)"),
        "mode": ("--openai-mode", str, "openai: score readout 'continue' (raw-prompt servers) or 'single' (chat APIs)"),
        "concurrency": ("--concurrency", int, "openai: requests in flight"),
        "max_retries": ("--max-retries", int, "openai: retries per request (429/5xx/timeouts/dropped connections)"),
        "timeout": ("--request-timeout", float, "openai: seconds per request"),
        "tensor_parallel_size": ("--tensor-parallel-size", int, "vllm: GPUs one model is split over"),
    }
