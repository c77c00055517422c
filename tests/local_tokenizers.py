"""Tokenizers built offline for tests: a Mistral-style (Llama sentencepiece-like) tokenizer.

The vocabulary is learnt here from the shared benchmark files (no download): BPE over
metaspace words ("▁" marks a leading space, as sentencepiece does), digits split one by one (so
" 4" is "▁" then "4", as in Mistral's vocabulary), ``<s>``/``</s>``/``<unk>`` special tokens and
Mistral-7B-Instruct-v0.2's chat template, which has no system role.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

# Mistral-7B-Instruct-v0.2's chat template (tokenizer_config.json of the first v0.2 release)
MISTRAL_V02_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)


def _corpus(data_dir: Path) -> list[str]:
    texts = []
    for name in ("vicuna_eval.json", "mt_bench_eval.json"):
        for row in json.loads((data_dir / "prometheus" / name).read_text(encoding="utf-8")):
            texts.append(row["instruction"])
            texts += row.get("gpt4_feedback", [])
    return texts


@lru_cache(maxsize=None)
def mistral_style_tokenizer(data_dir: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = _corpus(Path(data_dir))
    alphabet = sorted({ch for text in texts for ch in text} | set("[]/<>#:0123456789"))
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=4000, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    wrapped.chat_template = MISTRAL_V02_CHAT_TEMPLATE
    return wrapped
