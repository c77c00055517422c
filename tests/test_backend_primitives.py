"""Backend primitives on the OpenAI-compatible backend, against the local fake server: log-likelihood
from echoed prompt log-probabilities (text servers and vLLM's token-id prompts), candidate
log-probabilities after a given text, and the refusals when a server cannot give them."""
from __future__ import annotations

import math

import pytest

from fake_openai import FaultyOpenAIServer, prompt_token_logprob, score_logprobs
from tract_eval.candidates import derive_score_candidates
from tract_eval.experiments.analysis import perplexity

pytest.importorskip("openai")

CONTEXT = "Feedback: the answer is right."  # 30 characters: even, so character pairs end at its end
GREEDY = "bTp*"  # characters whose code points sum to a multiple of 7: the fake model's top tokens
NOT_GREEDY = "bTq*"


def backend_for(server, tokenizer_dir, **options):
    from tract_eval.backends import create_backend

    return create_backend("openai", None, base_url=server.base_url, tokenizer=str(tokenizer_dir), max_retries=1,
                          timeout=5, **options)


def test_loglikelihood_reads_the_continuations_echoed_tokens(tokenizer_dir):
    with FaultyOpenAIServer() as server:  # text server, one character per token
        backend = backend_for(server, tokenizer_dir)
        (greedy, n_greedy, is_greedy), (other, n_other, not_greedy) = backend.loglikelihood(
            [(CONTEXT, GREEDY), (CONTEXT, NOT_GREEDY)])
        assert server.posts == 2
    assert (n_greedy, n_other) == (4, 4)
    assert greedy == pytest.approx(sum(prompt_token_logprob(c) for c in GREEDY))
    assert other == pytest.approx(sum(prompt_token_logprob(c) for c in NOT_GREEDY)) and other < greedy
    assert is_greedy and not not_greedy


def test_loglikelihood_on_vllm_sends_the_ids_of_context_and_continuation(tokenizer_dir):
    with FaultyOpenAIServer(owned_by="vllm") as server:
        backend = backend_for(server, tokenizer_dir)
        assert backend.server == "vllm"
        context, continuation = "So the overall", " score is 4"
        [(logprob, count, _)] = backend.loglikelihood([(context, continuation)])
    ids = backend.encode(continuation)
    assert count == len(ids) == 3
    assert logprob == pytest.approx(sum(prompt_token_logprob(f"token_id:{i}") for i in ids))


def test_loglikelihood_refuses_a_server_without_prompt_logprobs(tokenizer_dir):
    with FaultyOpenAIServer(echo="ignore") as server:
        backend = backend_for(server, tokenizer_dir)
        with pytest.raises(RuntimeError, match="no log-probabilities of the prompt's tokens"):
            backend.loglikelihood([(CONTEXT, GREEDY)])


def test_loglikelihood_refuses_server_tokens_across_the_boundary(tokenizer_dir):
    with FaultyOpenAIServer(echo="pairs") as server:  # two characters per token
        backend = backend_for(server, tokenizer_dir)
        [(logprob, count, _)] = backend.loglikelihood([(CONTEXT, GREEDY)])  # the boundary falls between pairs
        assert count == 2 and logprob == pytest.approx(prompt_token_logprob("bT") + prompt_token_logprob("p*"))
        with pytest.raises(RuntimeError, match="cross the boundary"):
            backend.loglikelihood([(CONTEXT + "x", GREEDY)])


def test_perplexity_works_on_the_openai_backend(tokenizer_dir):
    with FaultyOpenAIServer() as server:
        result = perplexity(backend_for(server, tokenizer_dir), [(CONTEXT, "So the overall score is 4")])
    nll = -sum(prompt_token_logprob(c) for c in "So the overall score is 4")
    assert result.tokens == len("So the overall score is 4")
    assert result.perplexity == pytest.approx(math.exp(nll / result.tokens))


@pytest.mark.parametrize("owned_by", ["tract-eval-tests", "vllm"])
def test_candidate_logprobs_after_a_given_text(tokenizer_dir, owned_by):
    with FaultyOpenAIServer(owned_by=owned_by) as server:
        backend = backend_for(server, tokenizer_dir)
        candidates = derive_score_candidates(backend.tokenizer())
        contexts = [CONTEXT + " So the overall score is", "Other. So the overall score is"]
        results = backend.candidate_logprobs(contexts, candidates)
    for context, logprobs in zip(contexts, results):
        assert sorted(logprobs) == [1, 2, 3, 4, 5]
        if owned_by == "vllm":  # token ids are sent; the fake answers for the wanted ids
            target = 1 + len(str(backend.encode(context))) % 5
            expected = {s: -abs(seq[0] - target) - 1.0 for s, seq in zip(candidates.scores, candidates.sequences)}
        else:
            expected = {int(k): v for k, v in score_logprobs(context).items()}
        assert logprobs == pytest.approx(expected)


def test_candidate_logprobs_refuse_missing_candidates_and_chat_mode(tokenizer_dir):
    with FaultyOpenAIServer(faults=["partial"]) as server:
        backend = backend_for(server, tokenizer_dir)
        candidates = derive_score_candidates(backend.tokenizer())
        with pytest.raises(RuntimeError, match=r"no log-probability for the candidates \[1, 5\]"):
            backend.candidate_logprobs([CONTEXT + " So the overall score is"], candidates)
        chat = backend_for(server, tokenizer_dir, mode="single")
        with pytest.raises(ValueError, match="needs mode 'continue'"):
            chat.loglikelihood([(CONTEXT, GREEDY)])
