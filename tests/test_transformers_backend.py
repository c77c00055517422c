"""CoT-RAIL read from the generation pass must equal an independent forward pass."""
import json

import pytest

from tract_eval.backends import GenerationRequest, ScoreRequest
from tract_eval.candidates import derive_score_candidates
from tract_eval.judge_config import SeededSampling
from tract_eval.prompts import parse_prometheus_prompt

from readout_reference import forward_candidate_logprobs

pytestmark = pytest.mark.slow
TOLERANCE = 1e-4  # float32, max abs difference of candidate log-probabilities


@pytest.fixture(scope="module")
def prompts(embedded_backend, data_dir):
    """Two Vicuna questions of different lengths as chat prompts. The questions, not the ~1000-token
    grading prompts: what these tests check (readout, cut, EOS, random streams) does not depend on the
    prompt's length, and prefill and the reference forwards cost in proportion to it."""
    rows = json.loads((data_dir / "prometheus" / "vicuna_eval.json").read_text())
    questions = list(dict.fromkeys(parse_prometheus_prompt(r["instruction"]).instruction for r in rows))[:2]
    return [embedded_backend.render_chat([{"role": "user", "content": q}]) for q in questions]


def _check_against_forward(backend, candidates, request, completion):
    ids = backend.encode(request.prompt) + completion.token_ids
    reference = forward_candidate_logprobs(backend.model, ids, candidates)
    assert max(abs(reference[s] - completion.candidate_logprobs[s]) for s in reference) <= TOLERANCE
    # input + cot is exactly the text after which the score was read
    assert backend.decode(ids).endswith(completion.text)
    assert completion.text.endswith(candidates.delimiter + candidates.bridge_text)


def test_readout_equals_forward_pass_with_shared_prefill(embedded_backend, prompts):
    c = derive_score_candidates(embedded_backend.tokenizer())
    requests = [GenerationRequest(f"k{i}", p, n=3, candidates=c, cut_marker="So the overall") for i, p in enumerate(prompts)]
    out = embedded_backend.generate(requests, SeededSampling(max_new_tokens=24, seed=1))
    assert [len(o) for o in out] == [3, 3]
    assert len({comp.text for comp in out[0]}) == 3  # each CoT has its own random stream
    for request, completions in zip(requests, out):
        for completion in completions:
            _check_against_forward(embedded_backend, c, request, completion)


def test_cut_at_marker_masks_the_rest_of_the_cot(embedded_backend, prompts):
    """The letter "e" as cut marker forces TRACT's cut path, usually inside a token: the CoT
    tokens after the cut are masked out of the cache, the rest of the cut token is forced."""
    c = derive_score_candidates(embedded_backend.tokenizer())
    request = GenerationRequest("cut", prompts[0], n=2, candidates=c, cut_marker="e")
    completions = embedded_backend.generate([request], SeededSampling(max_new_tokens=24, seed=3))[0]
    assert all(comp.cut for comp in completions), [comp.text for comp in completions]
    for completion in completions:
        _check_against_forward(embedded_backend, c, request, completion)
        kept = completion.text[: -len(c.delimiter + c.bridge_text)]
        assert "e" not in kept and completion.generated_tokens > len(completion.token_ids) - len(c.delimiter_ids) - 2


def test_eos_ends_the_cot_and_is_never_fed(embedded_backend, prompts, monkeypatch):
    tok = embedded_backend.tokenizer()
    c = derive_score_candidates(tok)
    # treat "." and "," as end-of-sequence so the EOS path is taken within a few tokens
    eos = {tok.convert_tokens_to_ids("."), tok.convert_tokens_to_ids(",")}
    monkeypatch.setattr(embedded_backend, "eos_ids", embedded_backend.eos_ids | eos)
    request = GenerationRequest("eos", prompts[1], n=2, candidates=c, cut_marker="So the overall")
    completions = embedded_backend.generate([request], SeededSampling(max_new_tokens=60, seed=0))[0]
    assert any(comp.finish_reason == "eos" for comp in completions)
    for completion in completions:
        assert not eos & set(completion.token_ids)
        _check_against_forward(embedded_backend, c, request, completion)


def test_same_seed_same_cots_whatever_the_batch(embedded_backend, prompts):
    c = derive_score_candidates(embedded_backend.tokenizer())
    sampling = SeededSampling(max_new_tokens=12, seed=7)
    together = embedded_backend.generate(
        [GenerationRequest("a", prompts[0], n=2, candidates=c), GenerationRequest("b", prompts[1], n=1, candidates=c)],
        sampling)
    alone = embedded_backend.generate([GenerationRequest("b", prompts[1], n=1, candidates=c)], sampling)
    assert together[1][0].text == alone[0][0].text
    # CoT #1 asked for later (first_index=1) is the one a 2-CoT request made
    later = embedded_backend.generate([GenerationRequest("a", prompts[0], n=1, first_index=1, candidates=c)], sampling)
    assert later[0][0].text == together[0][1].text


def test_score_after_supplied_cot(embedded_backend, prompts):
    c = derive_score_candidates(embedded_backend.tokenizer())
    out = embedded_backend.score([
        ScoreRequest(prompts[0], "The response is detailed and practical.", c, "So the overall"),
        ScoreRequest(prompts[0], "Weak answer. So the overall quality is poor.", c, "So the overall"),
    ])
    assert out[0].text == "The response is detailed and practical. So the overall score is "
    assert out[1].cut and out[1].text == "Weak answer. So the overall score is "
    probs = [sum(2.718281828 ** lp for lp in o.candidate_logprobs.values()) for o in out]
    assert all(0 < p <= 1 for p in probs)
