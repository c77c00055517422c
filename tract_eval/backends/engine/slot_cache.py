"""The judge loop's KV cache: every layer's keys and values in preallocated ``[slots, heads, capacity, dim]``
buffers, one row (slot) per continuation, all slots writing at one column (the write head).

The classes subclass transformers' ``Cache`` and ``DynamicLayer`` (``transformers.cache_utils``), so a
model's attention calls ``update`` and ``get_seq_length`` on them as on its own cache. transformers
loads only when the first cache is made (the backend module stays light to import), so the methods
live in plain mixins here and :func:`slot_cache_class` joins them to transformers' bases once.
``internals.py`` lists what this relies on; a fast test checks it against the installed transformers.
"""
from __future__ import annotations

import functools


def kv_shape(model) -> tuple[int, int, int]:
    """Layers, KV heads and head size of a model's KV cache."""
    config = model.config.get_text_config()
    heads = config.num_key_value_heads or config.num_attention_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers, heads, dim


class _SlotLayer:
    """One layer's keys and values in preallocated ``[slots, heads, capacity, dim]`` buffers.

    Every slot writes at the same column (the write head); a slot's own tokens are a contiguous
    run of columns ending at the head, the columns before it are masked. Nothing is concatenated
    per step, so a step costs what attention reads, not a copy of the whole cache.
    """

    def __init__(self, keys, values):
        super().__init__()
        self.buffer_keys, self.buffer_values = keys, values
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self.set_length(0)

    def set_length(self, length: int) -> None:
        self.length = length
        self.keys = self.buffer_keys[:, :, :length]
        self.values = self.buffer_values[:, :, :length]

    def update(self, key_states, value_states, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        self.buffer_keys[:, :, self.length:end] = key_states
        self.buffer_values[:, :, self.length:end] = value_states
        self.set_length(end)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length


class _SlotCache:
    """The layers' slot buffers as one cache, with the moves the judge loop makes on all layers at once."""

    def __init__(self, layers):
        super().__init__(layers=layers)

    @classmethod
    def allocate(cls, model, slots: int, capacity: int):
        import torch

        layers, heads, dim = kv_shape(model)
        shape = (slots, heads, capacity, dim)
        return cls([slot_layer_class()(torch.zeros(shape, dtype=model.dtype, device=model.device),
                                       torch.zeros(shape, dtype=model.dtype, device=model.device))
                    for _ in range(layers)])

    @property
    def length(self) -> int:
        return self.layers[0].length

    @property
    def capacity(self) -> int:
        return self.layers[0].buffer_keys.shape[2]

    def set_length(self, length: int) -> None:
        for layer in self.layers:
            layer.set_length(length)

    def move_columns(self, start: int, stop: int, to: int) -> None:
        """Columns ``start:stop`` of every slot to ``to:`` (compaction and room for longer prompts)."""
        for layer in self.layers:
            for buffer in (layer.buffer_keys, layer.buffer_values):
                buffer[:, :, to: to + stop - start] = buffer[:, :, start:stop].clone()

    def write_prompt(self, slot: int, prefill, row: int, length: int) -> None:
        """The last ``length`` columns of row ``row`` of a prefill cache into ``slot``, ending at the head."""
        head = self.length
        for layer, source in zip(self.layers, prefill.layers):
            layer.buffer_keys[slot, :, head - length: head] = source.keys[row, :, -length:]
            layer.buffer_values[slot, :, head - length: head] = source.values[row, :, -length:]

    def gather(self, slots, extra: int):
        """A new cache with the given slots' columns ``:length`` and room for ``extra`` more."""
        import torch

        layers = []
        for layer in self.layers:
            buffers = []
            for source in (layer.buffer_keys, layer.buffer_values):
                shape = (len(slots), source.shape[1], self.length + extra, source.shape[3])
                buffer = torch.empty(shape, dtype=source.dtype, device=source.device)
                buffer[:, :, : self.length] = source[slots, :, : self.length]
                buffers.append(buffer)
            layers.append(slot_layer_class()(*buffers))
            layers[-1].set_length(self.length)
        return type(self)(layers)

    def view(self, start: int, count: int):
        """Slots ``start:start + count`` as a cache of their own that shares these buffers: what a
        forward over it adds lands past the head of those slots only."""
        layers = []
        for layer in self.layers:
            layers.append(slot_layer_class()(layer.buffer_keys[start: start + count],
                                             layer.buffer_values[start: start + count]))
            layers[-1].set_length(self.length)
        return type(self)(layers)

    def keep_slots(self, slots) -> None:
        for layer in self.layers:
            layer.buffer_keys = layer.buffer_keys[slots]
            layer.buffer_values = layer.buffer_values[slots]
            layer.set_length(layer.length)


@functools.cache  # one class, so every loop's layers are instances of it
def slot_layer_class():
    """``SlotLayer``: the slot methods over transformers' ``DynamicLayer`` (which they override)."""
    from transformers.cache_utils import DynamicLayer

    return type("SlotLayer", (_SlotLayer, DynamicLayer), {"__doc__": _SlotLayer.__doc__})


@functools.cache  # one class, so every loop's caches are instances of it
def slot_cache_class():
    """``SlotCache``: the slot methods over transformers' ``Cache`` (``allocate`` makes one for a model)."""
    from transformers.cache_utils import Cache

    return type("SlotCache", (_SlotCache, Cache), {"__doc__": _SlotCache.__doc__})
