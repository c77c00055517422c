"""The output layer on CPU, through a contiguous copy of its weight's transpose.

A decode step multiplies a few rows (one per sequence) by the output layer's ``[vocab, hidden]``
weight. On CPU, MKL does that through the stored layout's transpose up to 2x slower than through a
contiguous ``[hidden, vocab]`` copy: at batch 8, 3.8 vs 1.9 ms for SmolLM2's vocabulary at hidden
256 and 20 vs 9.7 ms at hidden 576 (SmolLM2-135M); equal at batch 1 and from batch 32 on. In the
judge loop the head took 8.7 of a 17.9 ms step at batch 8 (perf/judge_loop.py's small model), 5.1
with the copy.

The copy is made on first use and again whenever the weight changes (a new tensor, or an in-place
update such as an optimizer step); it is installed only for the backend's own forwards, so the
model object a user handed in is left as it was, and anything that needs gradients never sees it.
"""
from __future__ import annotations

import contextlib


class TransposedHead:
    def __init__(self, head):
        self.head = head
        self._copy = None
        self._key: tuple[int, int] | None = None

    def weight_t(self):
        weight = self.head.weight
        key = (weight.data_ptr(), weight._version)
        if key != self._key:
            self._copy, self._key = weight.detach().t().contiguous(), key
        return self._copy

    @contextlib.contextmanager
    def installed(self):
        """Inside the block the head multiplies by the copy (forwards without gradients only)."""
        weight_t = self.weight_t()
        self.head.forward = lambda hidden: hidden @ weight_t  # shadows the class's forward until deleted
        try:
            yield
        finally:
            del self.head.forward


def transposed_head(model) -> TransposedHead | None:
    """A :class:`TransposedHead` for a model whose output layer is a plain bias-free ``nn.Linear``
    with its weight in CPU memory; None for anything else (quantized or wrapped heads, offloaded or
    accelerator weights), which keeps the model's own layer."""
    import torch

    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.bias is not None or head.weight.device.type != "cpu":
        return None
    if "forward" in head.__dict__:  # a hook library (accelerate's offloading) already runs this layer
        return None
    return TransposedHead(head)
