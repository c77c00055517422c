"""Model sources other than the embedded GGUF: a local folder (a tiny model built from a config)."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tract_eval.backends.transformers_backend import TransformersBackend
from tract_eval.benchmarks import load_benchmark
from tract_eval.judges import build_judge

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, embedded_tokenizer):
    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(embedded_tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096)
    LlamaForCausalLM(config).save_pretrained(folder)
    embedded_tokenizer.save_pretrained(folder)
    return folder


def test_local_folder_model_runs_every_predictor(tiny_model_dir, data_dir):
    backend = TransformersBackend(str(tiny_model_dir), device="cpu", dtype="float32")
    assert backend.describe()["model_path"] == str(tiny_model_dir) and backend.describe()["gguf_file"] is None
    assert backend.describe()["attention"] == "grouped_sdpa"  # 4 query heads on 2 KV heads: no per-head copies
    samples = load_benchmark("vicuna", data_dir).select(2)
    for name in ("tract", "rail", "ce-decode-cot"):
        # renormalised so that a random model's scores stay inside the scale (raw mass is tiny)
        rows = build_judge(name, backend=backend, max_new_tokens=8, n_cot=2, renormalize=True).judge(samples)
        assert len(rows) == 2
        if name != "ce-decode-cot":
            assert all(1 <= r.prediction <= 5 for r in rows)
            assert all(abs(sum(p.values()) - 1) < 1e-6 for r in rows for p in r.score_probs)
        else:  # a random model writes no verdict: counted as parse failures, never dropped
            assert all(r.status in ("ok", "parse_failure") for r in rows)


def test_bfloat16_weights_still_read_scores_in_float32(tiny_model_dir, data_dir):
    backend = TransformersBackend(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert backend.model.dtype == torch.bfloat16
    rows = build_judge("tract", backend=backend, max_new_tokens=6, renormalize=True).judge(load_benchmark("vicuna", data_dir).select(1))
    assert 1 <= rows[0].prediction <= 5 and rows[0].candidate_mass[0] > 0


def test_model_args_reach_from_pretrained(tiny_model_dir):
    backend = TransformersBackend(str(tiny_model_dir), device="cpu", dtype="float32",
                                  model_args={"attn_implementation": "eager", "device_map": "cpu",
                                              "trust_remote_code": False})
    assert backend.model.config._attn_implementation == "eager" == backend.describe()["attention"]
    chosen = TransformersBackend(str(tiny_model_dir), device="cpu", dtype="float32",
                                 model_args={"attn_implementation": "sdpa"})
    assert chosen.describe()["attention"] == "sdpa"  # named in --model-args: kept as given
    assert str(backend.device) == "cpu" and backend.describe()["model_args"]["device_map"] == "cpu"


def test_a_gguf_loads_from_its_cached_conversion_with_the_same_weights_and_tokenizer(embedded_backend, data_dir):
    """The backend reads the embedded GGUF through its safetensors conversion: the weights equal a direct
    GGUF load's bit for bit, and the tokenizer encodes, decodes and renders chats the same."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tract_eval.conversion import default_cache_dir
    from tract_eval.models import resolve_model

    assert str(embedded_backend.model.config._name_or_path).startswith(str(default_cache_dir()))
    source = resolve_model(None)
    direct = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file, dtype=torch.float32)
    cached = embedded_backend.model.state_dict()
    assert all(torch.equal(tensor, cached[name]) for name, tensor in direct.state_dict().items())
    tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    ours = embedded_backend.tokenizer()
    texts = [row["instruction"] for row in json.loads((data_dir / "prometheus" / "vicuna_eval.json").read_text())[:10]]
    assert [tokenizer(t)["input_ids"] for t in texts] == [ours(t)["input_ids"] for t in texts]
    assert tokenizer.decode(list(range(0, len(tokenizer), 97))) == ours.decode(list(range(0, len(ours), 97)))
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert (tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            == ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))


def test_an_unwritable_conversion_cache_reads_the_gguf_saying_so(tmp_path, monkeypatch, caplog):
    from tract_eval.conversion import loadable_source
    from tract_eval.models import resolve_model

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("TRACT_EVAL_CACHE", str(blocker))  # the cache folder would have to be inside a file
    source = resolve_model(None)
    assert loadable_source(source) == source
    assert "dequantising the GGUF at every load" in caplog.text
