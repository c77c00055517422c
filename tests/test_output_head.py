"""The CPU output layer through a transposed copy (backends/engine/output_head.py): same logits, the model left as
it was, and a weight changed in place or replaced is picked up."""
import torch

from tract_eval.backends.engine.output_head import transposed_head


def tiny_llama(tie: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tie)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def test_logits_equal_the_models_own_and_the_model_is_left_as_it_was():
    for tie in (True, False):
        model = tiny_llama(tie)
        ids = torch.randint(0, 1000, (8, 5))
        head = transposed_head(model)
        with torch.inference_mode():
            expected = model(input_ids=ids).logits
            with head.installed():
                assert "forward" in model.lm_head.__dict__
                got = model(input_ids=ids).logits
        assert "forward" not in model.lm_head.__dict__
        assert torch.allclose(got, expected, atol=1e-6, rtol=0)
        # outside the block the layer is the model's own, with gradients
        model.train()
        model(input_ids=ids).logits.sum().backward()
        assert model.lm_head.weight.grad is not None


def test_a_changed_weight_is_picked_up():
    model = tiny_llama(tie=True)
    head = transposed_head(model)
    ids = torch.randint(0, 1000, (3, 4))
    with torch.inference_mode(), head.installed():
        model(input_ids=ids)
    with torch.no_grad():
        model.lm_head.weight.mul_(3)  # in place, as an optimizer step
    with torch.inference_mode():
        expected = model(input_ids=ids).logits
        with head.installed():
            assert torch.allclose(model(input_ids=ids).logits, expected, atol=1e-5, rtol=0)
    model.lm_head.weight = torch.nn.Parameter(torch.randn(1000, 32))  # replaced
    with torch.inference_mode():
        expected = model(input_ids=ids).logits
        with head.installed():
            assert torch.allclose(model(input_ids=ids).logits, expected, atol=1e-5, rtol=0)


def test_other_heads_keep_the_models_layer():
    model = tiny_llama(tie=False)
    model.lm_head = torch.nn.Linear(32, 1000, bias=True)
    assert transposed_head(model) is None
    model = tiny_llama(tie=False)
    model.lm_head.forward = lambda hidden: hidden  # a hook library's forward
    assert transposed_head(model) is None
    model = tiny_llama(tie=False).to("meta")  # offloaded weights
    assert transposed_head(model) is None
