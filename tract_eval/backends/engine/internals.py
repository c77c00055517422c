"""The transformers internals the engine relies on, each with what it expects and where it uses it.

transformers does not promise these across releases: the slot cache subclasses ``Cache`` and
``DynamicLayer`` and overrides part of them, grouped attention registers itself in the attention
registries, and the loop calls the model's forward with a cache of its own. :func:`broken_internals`
checks every entry against the installed transformers (``tests/test_engine_internals.py`` runs it,
fast), so an upgrade that moves one fails with its name and the place in the engine to fix.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Callable

Check = Callable[[object], "str | None"]  # the found object -> a problem, or None


@dataclass(frozen=True)
class Internal:
    name: str  # dotted path from ``transformers``
    expects: str  # what the engine assumes of it
    used_by: str  # where in tract_eval/backends the engine relies on it
    check: Check  # the found object -> a problem, or None when it is as expected


def _parameters(*names: str, var_keyword: bool = False) -> Check:
    """Callable with these named parameters (and ``**kwargs`` where asked)."""
    def check(obj) -> str | None:
        if not callable(obj):
            return f"is not callable ({type(obj).__name__})"
        if getattr(obj, "__isabstractmethod__", False):
            return "is abstract there (nothing for the engine to inherit)"
        params = inspect.signature(obj).parameters
        missing = [n for n in names if n not in params]
        if missing:
            return f"has no parameter(s) {missing}; its signature is {inspect.signature(obj)}"
        if var_keyword and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return f"takes no **kwargs; its signature is {inspect.signature(obj)}"
        return None
    return check


def _binds_self_only(method) -> str | None:
    """A method callable with no argument besides ``self`` (for ``__init__``: a class built with none)."""
    try:
        inspect.signature(method).bind(None)
    except TypeError as error:
        return f"needs arguments ({error}); its signature is {inspect.signature(method)}"
    return None


def _sets_on_init(*attributes: str) -> Check:
    def check(cls) -> str | None:
        missing = [a for a in attributes if a not in vars(cls())]
        return f"no longer sets {missing} in __init__" if missing else None
    return check


def _holds(key: str) -> Check:
    def check(registry) -> str | None:
        return None if key in registry else f"holds no {key!r} entry (it holds {sorted(registry)})"
    return check


def _has_attribute(name: str) -> Check:
    def check(cls) -> str | None:
        return None if hasattr(cls, name) else f"has no attribute {name!r}"
    return check


def _config_attributes(*names: str) -> Check:
    def check(config_class) -> str | None:
        config = config_class()
        missing = [n for n in names if not hasattr(config, n)]
        return f"instances have no attribute(s) {missing}" if missing else None
    return check


def _is_callable(obj) -> str | None:
    return None if callable(obj) else f"is not callable ({type(obj).__name__})"


SLOT_CACHE = "engine/slot_cache.py"
GROUPED = "engine/grouped_attention.py"
TRANSFORMERS_INTERNALS: tuple[Internal, ...] = (
    Internal("transformers.cache_utils.Cache", "a class whose __init__ takes layers=[...]",
             f"{SLOT_CACHE}: SlotCache subclasses it; _SlotCache.__init__ calls super().__init__(layers=layers)",
             lambda cls: _parameters("layers")(cls.__init__)),
    Internal("transformers.cache_utils.Cache.update",
             "update(key_states, value_states, layer_idx, ...) handing the states to self.layers[layer_idx].update",
             f"{SLOT_CACHE}: the model's attention writes each step's keys and values through it into _SlotLayer.update",
             _parameters("key_states", "value_states", "layer_idx")),
    Internal("transformers.cache_utils.Cache.get_seq_length", "get_seq_length(layer_idx=0) read from the layer",
             f"{SLOT_CACHE}: the model reads the slot cache's length through it (_SlotLayer.get_seq_length)",
             _parameters("layer_idx")),
    Internal("transformers.cache_utils.Cache.get_mask_sizes", "get_mask_sizes(query_length, layer_idx) from the layer",
             f"{SLOT_CACHE}: mask building asks the slot cache how many columns the mask spans",
             _parameters("query_length", "layer_idx")),
    Internal("transformers.cache_utils.DynamicLayer", "a cache layer class built with no arguments",
             f"{SLOT_CACHE}: SlotLayer subclasses it; _SlotLayer.__init__ calls super().__init__()",
             lambda cls: _binds_self_only(cls.__init__)),
    Internal("transformers.cache_utils.DynamicLayer", "__init__ sets keys, values and is_initialized",
             f"{SLOT_CACHE}: _SlotLayer sets keys/values to views of its buffers and is_initialized=True "
             "(so lazy_initialization never replaces them)",
             _sets_on_init("keys", "values", "is_initialized")),
    Internal("transformers.cache_utils.DynamicLayer.update", "update(key_states, value_states, *args, **kwargs)",
             f"{SLOT_CACHE}: _SlotLayer.update overrides it (writes at the head instead of concatenating)",
             _parameters("key_states", "value_states", var_keyword=True)),
    Internal("transformers.cache_utils.DynamicLayer.get_seq_length", "get_seq_length() with no arguments",
             f"{SLOT_CACHE}: _SlotLayer.get_seq_length overrides it (the write head)", _binds_self_only),
    Internal("transformers.cache_utils.DynamicLayer.get_mask_sizes",
             "get_mask_sizes(query_length), computed from get_seq_length()",
             f"{SLOT_CACHE}: inherited by SlotLayer, so masks span the slot cache's columns", _parameters("query_length")),
    Internal("transformers.AttentionInterface.register", "a classmethod register(key, value)",
             f"{GROUPED}: use_grouped_attention registers grouped_sdpa", _parameters("key", "value")),
    Internal("transformers.modeling_utils.ALL_ATTENTION_FUNCTIONS", "the attention registry models read, holding 'sdpa'",
             f"{GROUPED}: models look grouped_sdpa up there once registered; it replaces 'sdpa' only", _holds("sdpa")),
    Internal("transformers.masking_utils.AttentionMaskInterface.register", "a classmethod register(key, value)",
             f"{GROUPED}: grouped_sdpa's mask function is registered there", _parameters("key", "value")),
    Internal("transformers.masking_utils.sdpa_mask", "SDPA's mask function",
             f"{GROUPED}: registered as grouped_sdpa's mask function", _is_callable),
    Internal("transformers.integrations.sdpa_attention.sdpa_attention_forward",
             "(module, query, key, value, attention_mask, dropout, scaling, is_causal, position_bias, **kwargs)",
             f"{GROUPED}: grouped_sdpa_attention_forward takes its signature and hands it the cases it leaves alone",
             _parameters("module", "query", "key", "value", "attention_mask", "dropout", "scaling", "is_causal",
                         "position_bias", var_keyword=True)),
    Internal("transformers.PreTrainedModel.set_attn_implementation", "set_attn_implementation(attn_implementation)",
             f"{GROUPED}: switches a model to grouped_sdpa", _parameters("attn_implementation")),
    Internal("transformers.PreTrainedModel", "a _supports_attention_backend flag",
             f"{GROUPED}: models without it ignore the attention registry and are left alone",
             _has_attribute("_supports_attention_backend")),
    Internal("transformers.PreTrainedModel.get_output_embeddings", "the output layer",
             "engine/output_head.py: transposed_head finds the layer it multiplies for", _is_callable),
    Internal("transformers.PreTrainedConfig.get_text_config", "get_text_config(): the text model's config",
             f"{SLOT_CACHE} kv_shape, {GROUPED}, TransformersBackend.slot_bytes and prefill_bytes", _is_callable),
    Internal("transformers.LlamaConfig",
             "num_hidden_layers, num_attention_heads, num_key_value_heads, hidden_size, head_dim, vocab_size, "
             "intermediate_size on a config",
             f"{SLOT_CACHE}: kv_shape reads the first five; TransformersBackend.slot_bytes/prefill_bytes the others",
             _config_attributes("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_size",
                                "head_dim", "vocab_size", "intermediate_size")),
    Internal("transformers.LlamaForCausalLM.forward",
             "input_ids, attention_mask, position_ids, past_key_values, use_cache and logits_to_keep",
             "engine/forward.py forward_last, engine/loop.py JudgeLoop._readout, TransformersBackend.readout_logprobs",
             _parameters("input_ids", "attention_mask", "position_ids", "past_key_values", "use_cache",
                         "logits_to_keep")),
    Internal("transformers.RepetitionPenaltyLogitsProcessor", "RepetitionPenaltyLogitsProcessor(penalty)",
             "engine/sampling.py: logits_processors", lambda cls: _parameters("penalty")(cls.__init__)),
    Internal("transformers.TemperatureLogitsWarper", "TemperatureLogitsWarper(temperature)",
             "engine/sampling.py: logits_processors", lambda cls: _parameters("temperature")(cls.__init__)),
    Internal("transformers.LogitsProcessorList", "a list of processors called as (input_ids, scores)",
             "engine/sampling.py: logits_processors", _is_callable),
    Internal("transformers.TopPLogitsWarper", "TopPLogitsWarper(top_p): the top-p set sample_top_p reproduces",
             "engine/sampling.py: sample_top_p's definition (tests compare the two)",
             lambda cls: _parameters("top_p")(cls.__init__)),
)


def resolve(name: str):
    """The object a dotted name names: the longest importable module prefix, then attributes."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(f"no module of {name} imports")


def problem(internal: Internal) -> str | None:
    """One line naming the internal, what changed and where the engine uses it; None when it holds."""
    import transformers

    try:
        found = internal.check(resolve(internal.name))
    except (ImportError, AttributeError) as error:
        found = f"is gone ({type(error).__name__}: {error})"
    except TypeError as error:  # a check that cannot even look at what it found
        found = f"is not what it was ({error})"
    if found is None:
        return None
    return (f"transformers {transformers.__version__}: {internal.name} {found}; the engine expects "
            f"{internal.expects}; used in tract_eval/backends/{internal.used_by}")


def broken_internals() -> list[str]:
    """Every internal that no longer holds, one line each."""
    return [line for line in map(problem, TRANSFORMERS_INTERNALS) if line is not None]
