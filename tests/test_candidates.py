import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tract_eval.candidates import derive_score_candidates


def _word_level_tokenizer(vocab_words):
    """A tokenizer built from a local vocabulary: whitespace-split words, spaces dropped."""
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(vocab_words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def test_word_level_tokenizer_has_single_token_candidates_and_no_bridge():
    words = "So the overall score is".split() + [str(i) for i in range(1, 11)]
    tok = _word_level_tokenizer(words)
    c = derive_score_candidates(tok, scale=(1, 10))
    assert c.bridge_ids == ()
    assert c.single_token
    assert [tok.convert_ids_to_tokens(list(s))[0] for s in c.sequences] == [str(i) for i in range(1, 11)]


def test_digit_split_tokenizer_scores_10_as_a_two_token_sequence():
    words = "So the overall score is".split() + [str(i) for i in range(10)]
    tok = _word_level_tokenizer(words)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True)])
    c = derive_score_candidates(tok, scale=(1, 10))
    assert not c.single_token
    assert [len(s) for s in c.sequences] == [1] * 9 + [2]
    assert tok.convert_ids_to_tokens(list(c.sequences[-1])) == ["1", "0"]


def test_scores_that_collapse_to_one_token_are_refused():
    words = "So the overall score is".split() + [str(i) for i in range(1, 6)]
    tok = _word_level_tokenizer(words)
    assert derive_score_candidates(tok, scale=(1, 5)).single_token
    with pytest.raises(ValueError, match="share the same tokens"):
        derive_score_candidates(tok, scale=(1, 7))  # "6" and "7" both map to [UNK]


@pytest.mark.slow
def test_embedded_tokenizer_bridge_is_the_space_token(embedded_tokenizer):
    tok = embedded_tokenizer
    c = derive_score_candidates(tok)
    assert tok.decode(list(c.bridge_ids)) == " "
    assert [tok.decode(list(s)) for s in c.sequences] == ["1", "2", "3", "4", "5"]
    assert tok.decode(list(c.delimiter_ids)) == "So the overall score is"
    # a 1-10 scale: "10" is two tokens, so candidates are scored as sequences
    c10 = derive_score_candidates(tok, scale=(1, 10))
    assert not c10.single_token and tok.decode(list(c10.sequences[-1])) == "10"
    # ids agree with what the tokenizer gives for the full sentence
    full = tok("So the overall score is 4", add_special_tokens=False)["input_ids"]
    assert full == list(c.delimiter_ids) + list(c.bridge_ids) + list(c.sequences[3])
