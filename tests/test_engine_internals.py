"""The transformers internals the engine relies on (tract_eval/backends/engine/internals.py) hold in the
installed transformers. Fast: no model is built. A failure names the internal, what changed, and where
the engine uses it, so an upgrade that breaks one says what to fix."""
from types import SimpleNamespace

import pytest
import torch

from tract_eval.backends.engine import slot_cache_class
from tract_eval.backends.engine.internals import TRANSFORMERS_INTERNALS, Internal, broken_internals, problem


@pytest.mark.parametrize("internal", TRANSFORMERS_INTERNALS,
                         ids=[f"{i.name}-{n}" for n, i in enumerate(TRANSFORMERS_INTERNALS)])
def test_each_transformers_internal_the_engine_relies_on_holds(internal):
    assert problem(internal) is None, problem(internal)


def test_a_changed_internal_is_named_with_where_the_engine_uses_it(monkeypatch):
    from transformers.cache_utils import DynamicLayer

    monkeypatch.delattr(DynamicLayer, "get_mask_sizes")  # what SlotLayer inherits is now the abstract base's
    broken = broken_internals()
    assert len(broken) == 1, broken
    assert "transformers.cache_utils.DynamicLayer.get_mask_sizes is abstract there" in broken[0]
    assert "used in tract_eval/backends/engine/slot_cache.py" in broken[0]
    monkeypatch.delattr("transformers.masking_utils.sdpa_mask")
    gone = [line for line in broken_internals() if "sdpa_mask" in line]
    assert len(gone) == 1 and "is gone" in gone[0] and "engine/grouped_attention.py" in gone[0]
    monkeypatch.undo()

    def update(self, key_states):  # an override point whose signature moved
        return key_states

    monkeypatch.setattr(DynamicLayer, "update", update)
    moved = [line for line in broken_internals() if "DynamicLayer.update" in line]
    assert len(moved) == 1 and "has no parameter(s) ['value_states']" in moved[0], moved
    assert "_SlotLayer.update overrides it" in moved[0]


class _Nothing:
    pass


class _NeedsArgument:
    def __init__(self, required):
        self.required = required


def _refuses(check, stand_in) -> bool:
    try:
        return check(stand_in) is not None
    except Exception:  # noqa: BLE001 - a check that cannot even look at the object refuses it
        return True


@pytest.mark.parametrize("internal", TRANSFORMERS_INTERNALS,
                         ids=[f"{i.name}-{n}" for n, i in enumerate(TRANSFORMERS_INTERNALS)])
def test_each_check_refuses_what_the_engine_could_not_use(internal):
    """Every check can fail: it refuses at least one of a plain object, an empty class and a class whose
    constructor needs an argument (so a test above that passes has checked something)."""
    assert any(_refuses(internal.check, stand_in) for stand_in in (object(), _Nothing, _NeedsArgument)), internal.name


def _stub_model(layers=2, kv_heads=2, dim=4):
    config = SimpleNamespace(num_hidden_layers=layers, num_key_value_heads=kv_heads, num_attention_heads=4,
                             head_dim=dim, hidden_size=16)
    config.get_text_config = lambda: config
    return SimpleNamespace(config=config, dtype=torch.float32, device=torch.device("cpu"))


def test_transformers_cache_hands_updates_and_lengths_to_the_slot_layers():
    """What a model's attention calls on a cache (Cache.update, get_seq_length, get_mask_sizes) reaches the
    slot layers: the states land at the write head of the slot buffers, and the lengths are the head's."""
    cache = slot_cache_class().allocate(_stub_model(), slots=3, capacity=10)
    cache.set_length(4)
    keys, values = torch.ones(3, 2, 1, 4), torch.full((3, 2, 1, 4), 2.0)
    out_keys, out_values = cache.update(keys, values, 1, {"cache_position": None})
    layer = cache.layers[1]
    assert out_keys.shape[2] == 5 and torch.equal(layer.buffer_keys[:, :, 4:5], keys), \
        "transformers' Cache.update no longer writes through the slot layer's update (engine/slot_cache.py)"
    assert torch.equal(layer.buffer_values[:, :, 4:5], values)
    assert cache.layers[0].length == 4  # other layers untouched
    assert cache.get_seq_length(1) == 5, "Cache.get_seq_length no longer reads the slot layer (engine/slot_cache.py)"
    assert cache.get_mask_sizes(1, 1) == (6, 0), \
        "Cache.get_mask_sizes no longer spans the slot layer's columns + the query (engine/slot_cache.py)"
