"""One forward of the model as the engine runs it: left-padded id rows in, the last position's logits out."""
from __future__ import annotations


def forward_last(model, input_ids, attention_mask, position_ids, cache):
    """The float32 logits at each row's last position and the cache the forward filled (``cache`` None:
    a fresh one, as a prefill makes)."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,  # only the last position is read; skips a (batch x prompt x vocab) matrix
    )
    return out.logits[:, -1, :].float(), out.past_key_values


def left_padded(rows: list[list[int]], pad: int, device):
    """Id rows as one batch padded on the left (so every row ends at the last column): input ids,
    attention mask and position ids counted from each row's first real id."""
    import torch

    width = max(len(r) for r in rows)
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return input_ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)
