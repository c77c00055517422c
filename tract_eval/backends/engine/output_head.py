"""The output layer on CPU, through a contiguous copy of its weight's transpose.

A decode step multiplies a few rows (one per sequence) by the output layer's ``[vocab, hidden]``
weight. On CPU, MKL is slower through the stored layout's transpose than through a contiguous
``[hidden, vocab]`` copy at small batches and never faster: for SmolLM2's 49152-token vocabulary at
hidden 256, medians of 7 interleaved runs gave 4.6 vs 3.1 ms at batch 8, 8.2 vs 6.4 at 32 and the same
at 128; at hidden 576 (SmolLM2-135M) 4.7 vs 3.8 ms at batch 1 and about the same from batch 8 on. In
the judge loop on perf/judge_loop.py's small model the head took 8.7 of a 17.9 ms step at batch 8,
5.1 with the copy.

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
