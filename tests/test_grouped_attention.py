"""Grouped-query attention without the per-head KV copies equals transformers' SDPA path."""
import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from tract_eval.backends.engine.grouped_attention import NAME, grouped_sdpa_attention_forward, use_grouped_attention


class _Attention(torch.nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, True


def _causal_padding_mask(batch: int, q_length: int, kv_length: int, pads: list[int]):
    """SDPA's boolean mask [batch, 1, q, kv]: causal over the last q columns, left padding hidden."""
    rows = torch.arange(kv_length - q_length, kv_length)[:, None]
    mask = (torch.arange(kv_length)[None, :] <= rows).expand(batch, 1, q_length, kv_length).clone()
    for b, pad in enumerate(pads):
        mask[b, :, :, :pad] = False
    mask[:, :, :, -1] = True  # a padded query row still sees its own column (never an empty softmax)
    return mask


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 3), kv_heads=st.integers(1, 3), groups=st.integers(1, 4), q_length=st.integers(1, 5),
       past=st.integers(0, 40), data=st.data())
def test_folded_queries_attend_as_repeated_kv_heads(batch, kv_heads, groups, q_length, past, data):
    kv_length = past + q_length
    pads = [data.draw(st.integers(0, kv_length - 1)) for _ in range(batch)]
    generator = torch.Generator().manual_seed(batch * 1000 + kv_heads * 100 + groups * 10 + q_length)
    query = torch.randn(batch, kv_heads * groups, q_length, 16, generator=generator)
    key = torch.randn(batch, kv_heads, kv_length, 16, generator=generator)
    value = torch.randn(batch, kv_heads, kv_length, 16, generator=generator)
    mask = _causal_padding_mask(batch, q_length, kv_length, pads)
    module = _Attention(groups)
    ours, _ = grouped_sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
    theirs, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
    assert ours.shape == theirs.shape == (batch, q_length, kv_heads * groups, 16)
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-5)


def _tiny_llama(kv_heads: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=256)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def test_a_grouped_sdpa_model_switches_and_keeps_its_logits():
    stock = _tiny_llama(kv_heads=2)
    grouped = copy.deepcopy(stock)
    assert use_grouped_attention(grouped) and grouped.config._attn_implementation == NAME
    ids = torch.randint(0, 128, (3, 20), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[0, :5], mask[2, :11] = 0, 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        a = stock(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], use_cache=True)
        b = grouped(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], use_cache=True)
        assert torch.allclose(a.logits, b.logits, atol=1e-5)
        # one cached decode step, the judge loop's shape (one query per row, a padded mask)
        step_a = stock(input_ids=ids[:, -1:], attention_mask=mask, position_ids=positions[:, -1:],
                       past_key_values=a.past_key_values).logits
        step_b = grouped(input_ids=ids[:, -1:], attention_mask=mask, position_ids=positions[:, -1:],
                         past_key_values=b.past_key_values).logits
        assert torch.allclose(step_a, step_b, atol=1e-5)


@pytest.mark.parametrize("kv_heads, implementation", [(4, "sdpa"), (2, "eager")])
def test_models_without_grouped_sdpa_are_left_alone(kv_heads, implementation):
    model = _tiny_llama(kv_heads)
    model.set_attn_implementation(implementation)
    assert not use_grouped_attention(model)
    assert model.config._attn_implementation == implementation
