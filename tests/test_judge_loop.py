"""The transformers judge loop (batched device sampling, continuous batching, chunked RAIL readout)
against independent references, on a tiny random-weight Llama with the embedded tokenizer.

The sampler changed with issue 9: each CoT's draws are counter-based uniforms of its stream seed and
the token is picked by inverse CDF on the device, where the loop before drew with ``torch.multinomial``
from a per-CoT CPU generator. Same seed, same CoTs therefore holds from this sampler on, not across
that change; what is pinned here: the sampler draws what its definition (a full stable sort) draws
and what TopPLogitsWarper keeps; the loop draws exactly what an unbatched, uncached reference
sampler draws, whatever the batch size and slot reuse (in float64, see ``backend64``); CoTs K..2K-1 asked for later are the ones a
2K-CoT request makes; the score read from the generation pass equals an independent forward pass
within 1e-4 (cut path and multi-token candidates included).
"""
import dataclasses
import weakref

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from tract_eval.backends import GenerationRequest, ScoreRequest
from tract_eval.backends.base import stream_seed
from tract_eval.backends.engine.sampling import logits_processors, sample_top_p, stream_uniforms
from tract_eval.backends.engine import JudgeLoop, candidate_variants, run_judge_loop
from tract_eval.backends.transformers_backend import TransformersBackend
from tract_eval.candidates import derive_score_candidates
from tract_eval.judge_config import SamplingConfig, SeededSampling
from tract_eval.protocol import finish_cot

from readout_reference import forward_candidate_logprobs

TOLERANCE = 1e-4  # float32, max abs difference of candidate log-probabilities
SAMPLING = SamplingConfig(temperature=1.0, top_p=0.9, repetition_penalty=1.03, max_new_tokens=7)


def seeded(seed: int, sampling: SamplingConfig = SAMPLING) -> SeededSampling:
    """The settings a backend samples with: ``sampling`` and the seed."""
    return SeededSampling(**dataclasses.asdict(sampling), seed=seed)


def tiny_backend(dtype: torch.dtype) -> TransformersBackend:
    from transformers import LlamaConfig, LlamaForCausalLM

    from tract_eval.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(None))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # sharper logits than the default init, so top-p removes a real tail
        model.model.embed_tokens.weight.mul_(8)
    return TransformersBackend.from_model(model.to(dtype), tokenizer, spec="tiny-random")


@pytest.fixture(scope="module")
def backend():
    return tiny_backend(torch.float32)


@pytest.fixture(scope="module")
def backend64():
    """The same model in float64, for tests that pin draws across computations that round differently
    in float32 (a cached decode step vs a full forward, a batch of 4 vs a batch of 1). This model's
    top-p set still holds ~20000 tokens, so a float32 draw can sit within rounding of a neighbour's
    boundary: measured, a target 1.5e-8 from a boundary (Z = 5.85) while the cached and full
    forwards' logits differ by 1.9e-6. In float64 the logits agree far below float32's resolution
    (sampling still runs on float32 scores), so these tests check the loop, not the luck of rounding."""
    return tiny_backend(torch.float64)


@pytest.fixture(scope="module")
def prompts(backend):
    questions = ["What is 2+2?", "Name a colour and say why you like it.", "Hi", "Write one sentence about rain."]
    return [backend.render_chat([{"role": "user", "content": q}]) for q in questions]


def reference_cot(backend, request: GenerationRequest, index: int, sampling: SamplingConfig, seed: int) -> list[int]:
    """One CoT, unbatched and without a cache: a full forward per token, the same processors and draw."""
    prompt = backend.encode(request.prompt)
    seed_of_stream = stream_seed(seed, request.key, request.first_index + index)
    processors = logits_processors(sampling.repetition_penalty, sampling.temperature)
    generated: list[int] = []
    with torch.inference_mode():
        while len(generated) < sampling.max_new_tokens:
            ids = torch.tensor([prompt + generated])
            scores = processors(ids, backend.model(input_ids=ids).logits[:, -1].float())
            u = stream_uniforms(np.array([seed_of_stream], dtype=np.uint64), np.array([len(generated)], dtype=np.uint64))
            token = int(sample_top_p(scores, torch.from_numpy(u), sampling.top_p)[0])
            if token in backend.eos_ids:
                break
            generated.append(token)
            if request.candidates and backend.decode(generated).endswith(request.candidates.delimiter):
                break
    return generated


def check_readout(backend, request, completion, candidates):
    ids = backend.encode(request.prompt) + completion.token_ids
    reference = forward_candidate_logprobs(backend.model, ids, candidates)
    assert max(abs(reference[s] - completion.candidate_logprobs[s]) for s in reference) <= TOLERANCE
    assert backend.decode(ids).endswith(completion.text)
    assert completion.text.endswith(candidates.delimiter + candidates.bridge_text)


def test_uniforms_depend_only_on_stream_and_draw():
    seeds = np.array([1, 2**63 - 1, 12345, 1], dtype=np.uint64)
    draws = np.array([0, 5, 7, 1], dtype=np.uint64)
    together = stream_uniforms(seeds, draws)
    alone = [stream_uniforms(seeds[i:i + 1], draws[i:i + 1])[0] for i in range(4)]
    assert together.dtype == np.float32 and list(together) == alone
    assert together[0] != together[3]  # the draw index moves the stream on
    many = stream_uniforms(np.full(20000, 99, dtype=np.uint64), np.arange(20000, dtype=np.uint64))
    assert many.min() >= 0 and many.max() < 1 and abs(many.mean() - 0.5) < 0.01


def test_order_keys_sort_as_the_scores_do():
    """The sampler's int32 keys: equal for equal scores (-0.0 and +0.0 too), ordered as the scores."""
    from tract_eval.backends.engine.sampling import _order_keys

    scores = torch.cat([torch.randn(5000) * 30, torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 1e-45,
                                                              -1e-45, 3.4e38, -3.4e38])])
    keys = _order_keys(scores.unsqueeze(0))[0].long()
    a, b = torch.meshgrid(torch.arange(len(scores)), torch.arange(len(scores))[:: 7], indexing="ij")
    assert torch.equal(keys[a] < keys[b], scores[a] < scores[b])
    assert torch.equal(keys[a] == keys[b], scores[a] == scores[b])


@pytest.mark.parametrize("scale", [0.0, 0.05, 1.0, 8.0, 40.0])
def test_bucketed_top_p_draws_what_the_full_sort_draws(scale):
    """The sampler buckets tokens instead of sorting the vocabulary; it must draw what the full stable
    sort (its definition) draws: peaked and near-uniform rows, ties at the top, in the middle and at
    a bucket's edge, -inf scores, and every u of a grid (so top-p boundaries are crossed)."""
    from tract_eval.backends.engine.sampling import sample_top_p_sorted

    torch.manual_seed(int(scale * 10))
    scores = torch.randn(6, 1000) * scale
    scores[0, :7] = scores[0].max()  # a tie at the top: ids in order
    scores[1, 100:400] = scores[1].median()  # a large tie in the middle
    scores[2, ::3] = float("-inf")  # masked tokens
    scores[3] = scores[3].round(decimals=1)  # many ties everywhere
    grid = (torch.arange(32, dtype=torch.float32) + 0.5) / 32
    for top_p in (0.1, 0.9, 0.999):
        for row in range(scores.shape[0]):
            batch = scores[row].expand(len(grid), -1)
            assert torch.equal(sample_top_p(batch, grid, top_p), sample_top_p_sorted(batch, grid, top_p))


def test_top_p_draw_is_the_inverse_cdf_of_transformers_top_p_set():
    from transformers import TopPLogitsWarper

    torch.manual_seed(1)
    scores = torch.randn(3, 40) * 2
    scores[1, :4] = 5.0  # ties: ordered by id
    kept = TopPLogitsWarper(0.9)(None, scores.clone()) > float("-inf")
    grid = torch.arange(4000, dtype=torch.float32) / 4000
    for row in range(3):
        drawn = sample_top_p(scores[row].expand(len(grid), -1), grid, 0.9)
        assert set(drawn.tolist()) == set(torch.nonzero(kept[row]).flatten().tolist())
        probs = torch.softmax(scores[row].masked_fill(~kept[row], float("-inf")), dim=-1)
        frequency = torch.bincount(drawn, minlength=40) / len(grid)
        assert torch.allclose(frequency, probs, atol=2 / len(grid))
        assert drawn[0] == int(torch.argmax(scores[row]))  # u = 0: the most probable token
    tied = sample_top_p(scores[1].expand(len(grid), -1), grid, 0.9)
    assert list(dict.fromkeys(tied.tolist()))[:4] == [0, 1, 2, 3]  # equal scores: lower id first


@pytest.mark.slow  # builds a model and loads the embedded tokenizer
@pytest.mark.parametrize("batch_size", [1, 3, None])
@pytest.mark.parametrize("batch_prefill", [True, False])  # padded prompt batches (accelerators) or one per forward (CPU)
def test_loop_draws_what_the_unbatched_reference_draws(backend64, prompts, batch_size, batch_prefill, monkeypatch):
    backend = backend64
    monkeypatch.setattr(backend, "batch_prefill", batch_prefill)
    requests = [GenerationRequest(f"q{i}", p, n=2) for i, p in enumerate(prompts[:3])]
    out = backend.generate(requests, seeded(5), batch_size=batch_size)
    for request, completions in zip(requests, out):
        for index, completion in enumerate(completions):
            assert completion.token_ids == reference_cot(backend, request, index, SAMPLING, seed=5)
    assert len({c.text for c in out[0]}) == 2  # each CoT its own stream


@pytest.mark.slow  # builds a model and loads the embedded tokenizer
def test_static_batching_keeps_idle_slots_and_the_same_cots(backend64, prompts, monkeypatch):
    """run_judge_loop(shrink_idle_slots=False), perf's static batching, keeps every slot in every step
    where the default drops idle ones once half are idle; the CoTs are the same either way."""
    backend = backend64
    widths = []
    step = JudgeLoop._decode_step

    def counting_step(loop, continuing):
        widths.append(len(loop.slot_streams))
        return step(loop, continuing)

    monkeypatch.setattr(JudgeLoop, "_decode_step", counting_step)
    # one id in five ends a CoT: lengths vary (geometric, capped at 7), so slots go idle at different steps
    monkeypatch.setattr(backend, "eos_ids", backend.eos_ids | set(range(0, len(backend.tokenizer()), 5)))
    requests = [GenerationRequest(f"s{i}", p, n=2) for i, p in enumerate(prompts[:2])]
    static = run_judge_loop(backend, requests, seeded(4), batch_size=4, shrink_idle_slots=False)
    static_widths, widths[:] = list(widths), []
    shrinking = run_judge_loop(backend, requests, seeded(4), batch_size=4)
    assert set(static_widths) == {4} and min(widths) < 4, (static_widths, widths)
    assert len({c.generated_tokens for g in static for c in g}) > 1
    assert [[c.token_ids for c in g] for g in static] == [[c.token_ids for c in g] for g in shrinking]


@pytest.mark.slow  # builds a model and loads the embedded tokenizer
def test_later_cots_are_the_ones_a_larger_request_makes(backend64, prompts):
    backend = backend64
    both = backend.generate([GenerationRequest("a", prompts[0], n=4)], seeded(2))[0]
    later = backend.generate([GenerationRequest("a", prompts[0], n=2, first_index=2)], seeded(2), batch_size=1)[0]
    assert [c.token_ids for c in later] == [c.token_ids for c in both[2:]]


@pytest.mark.slow  # builds a model and loads the embedded tokenizer
@pytest.mark.parametrize("scale", [(1, 5), (1, 10), (1, 12)])
@pytest.mark.parametrize("cut_marker", ["So the overall", "e"])
@pytest.mark.parametrize("batch_prefill", [True, False])
@pytest.mark.parametrize("in_place", [True, False])
def test_readout_equals_an_independent_forward_pass(backend, prompts, scale, cut_marker, batch_prefill, in_place,
                                                    monkeypatch):
    """Length-limited CoTs get the delimiter forced; with "e" as cut marker they are cut (usually
    inside a token) and the CoT tokens after the cut are masked; 1-10 has the two-token "10", 1-12 three
    two-token candidates that share their first id (a readout row each).
    Readouts run over the finished slots in place where they can (adjacent slots, one candidate
    variant each), or over copies of them, which ``in_place=False`` forces for every readout."""
    monkeypatch.setattr(backend, "batch_prefill", batch_prefill)
    paths = []
    choose = JudgeLoop._readout_cache

    def readout_cache(loop, rows, span):
        cache = choose(loop, rows, span) if in_place else loop.cache.gather(torch.tensor(rows), span)
        paths.append(cache.layers[0].buffer_keys.data_ptr() == loop.cache.layers[0].buffer_keys[rows[0]].data_ptr())
        return cache

    monkeypatch.setattr(JudgeLoop, "_readout_cache", readout_cache)
    candidates = derive_score_candidates(backend.tokenizer(), scale=scale)
    assert scale == (1, 5) or not candidates.single_token
    requests = [GenerationRequest(f"r{i}", p, n=2, candidates=candidates, cut_marker=cut_marker)
                for i, p in enumerate(prompts)]
    out = backend.generate(requests, seeded(3), batch_size=3)
    everything = backend.generate(requests, seeded(3))
    assert [[c.text for c in g] for g in out] == [[c.text for c in g] for g in everything]
    if cut_marker == "e":
        assert all(c.cut for group in out for c in group)
    for request, completions in zip(requests, out):
        for completion in completions:
            assert completion.finish_reason == "length"
            check_readout(backend, request, completion, candidates)
    # in place exactly where each slot has one row (one candidate variant: 1-5, or 1-10 with its one "10")
    assert set(paths) == {in_place and len(candidate_variants(candidates)) == 1}


@pytest.mark.slow  # builds a model and loads the embedded tokenizer
@pytest.mark.parametrize("batch_prefill", [True, False])
def test_batched_readouts_equal_one_forward_per_candidate(backend, prompts, batch_prefill, monkeypatch):
    """Supplied CoTs of different lengths (padded in one forward under batch_prefill), two candidate
    sets in one call (1-5, and 1-10 with the two-token "10"), results in the order asked."""
    monkeypatch.setattr(backend, "batch_prefill", batch_prefill)
    five = derive_score_candidates(backend.tokenizer(), scale=(1, 5))
    ten = derive_score_candidates(backend.tokenizer(), scale=(1, 10))
    cots = ["Fine.", "The answer is wrong in two places and misses the point. So the overall quality is low.",
            "Clear, short and correct; it could cite a source."]
    requests = [ScoreRequest(p, cot, candidates, "So the overall")
                for p in prompts for cot, candidates in zip(cots, [five, ten, ten])]
    out = backend.score(requests)
    assert len({len(backend.encode(r.prompt) + c.token_ids) for r, c in zip(requests, out)}) > 3
    for request, completion in zip(requests, out):
        ids = backend.encode(request.prompt) + completion.token_ids
        reference = forward_candidate_logprobs(backend.model, ids, request.candidates)
        assert set(completion.candidate_logprobs) == set(reference)
        assert max(abs(reference[s] - completion.candidate_logprobs[s]) for s in reference) <= TOLERANCE
    contexts = [r.prompt + c.text for r, c in zip(requests, out)]
    read = backend.candidate_logprobs(contexts, ten)
    for text, scores in zip(contexts, read):
        reference = forward_candidate_logprobs(backend.model, backend.encode(text), ten)
        assert max(abs(reference[s] - scores[s]) for s in reference) <= TOLERANCE


@pytest.mark.slow  # builds a model and loads the embedded tokenizer
@pytest.mark.parametrize("readout", ["reference", "sampled"])
def test_delimiter_and_eos_finish_cots_of_varying_length(backend64, prompts, monkeypatch, readout):
    """A one-letter delimiter ("e") ends many CoTs early, and extra end-of-sequence ids end others:
    slots are refilled at different steps, and every CoT still matches the reference and the readout."""
    backend = backend64
    tok = backend.tokenizer()
    candidates = derive_score_candidates(tok, delimiter="e", scale=(1, 10))
    eos = set(tok(" the, and. to of", add_special_tokens=False)["input_ids"])
    monkeypatch.setattr(backend, "eos_ids", backend.eos_ids | eos)
    requests = [GenerationRequest(f"d{i}", p, n=3, candidates=candidates, readout=readout)
                for i, p in enumerate(prompts)]
    out = backend.generate(requests, seeded(11), batch_size=2)
    reasons = {c.finish_reason for group in out for c in group}
    assert "delimiter" in reasons
    for request, completions in zip(requests, out):
        for index, completion in enumerate(completions):
            drawn = reference_cot(backend, request, index, SAMPLING, seed=11)
            if readout == "sampled" and not completion.cut:  # (a cut drops sampled ids from token_ids)
                assert completion.token_ids[: completion.generated_tokens] == drawn
            if readout == "reference":  # the drawn CoT, stripped on both sides, retokenized with the prompt
                kept, forced, _ = finish_cot(backend.decode(drawn), candidates.delimiter, None)
                expected = backend.encode(request.prompt + kept.strip() + forced) + list(candidates.bridge_ids)
                assert backend.encode(request.prompt) + completion.token_ids == expected
            assert not eos & set(completion.token_ids)
            check_readout(backend, request, completion, candidates)


@pytest.mark.slow  # builds a model and loads the embedded tokenizer
def test_reference_readout_retokenizes_what_the_sampled_ids_spell_differently(backend, prompts):
    """The reference reads after the prompt + the CoT stripped on both sides, tokenized as one text;
    the single pass reuses its cache up to the first differing id. On this random model many CoTs
    start with whitespace or spell a text in non-canonical ids, so both readouts are exercised."""
    candidates = derive_score_candidates(backend.tokenizer())
    by_mode = {}
    for readout in ("reference", "sampled"):
        requests = [GenerationRequest(f"w{i}", p, n=4, candidates=candidates, readout=readout)
                    for i, p in enumerate(prompts)]
        by_mode[readout] = (requests, backend.generate(requests, seeded(5), batch_size=3))
    differing = 0
    for (request, ref_group), sampled_group in zip(zip(*by_mode["reference"]), by_mode["sampled"][1]):
        for ref, sampled in zip(ref_group, sampled_group):
            kept_sampled = sampled.text[: -len(" " + candidates.delimiter + candidates.bridge_text)]
            assert ref.text == kept_sampled.lstrip() + " " + candidates.delimiter + candidates.bridge_text
            assert backend.encode(request.prompt) + ref.token_ids == backend.encode(request.prompt + ref.text)
            check_readout(backend, request, ref, candidates)
            differing += ref.token_ids != sampled.token_ids
    assert differing > 0, "no CoT exercised the retokenized readout"


@pytest.mark.slow  # builds a model and loads the embedded tokenizer
def test_batch_size_auto_is_a_setting_and_needs_cuda(backend):
    from tract_eval.judge_config import JudgeConfig
    from tract_eval.errors import ConfigError

    assert JudgeConfig(name="j", batch_size="auto").batch_size == "auto"
    with pytest.raises(ConfigError, match="batch_size must be >= 1 or 'auto'"):
        JudgeConfig(name="j", batch_size="many")
    if backend.device.type != "cuda":
        with pytest.raises(ValueError, match="needs a CUDA device"):
            backend.generate([GenerationRequest("x", "hello")], seeded(0), batch_size="auto")


class PeakBytes(TorchDispatchMode):
    """The most bytes that tensors made inside the block held at once (storages counted once, until freed)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                if storage.nbytes() and storage.data_ptr() not in self.live:
                    self.live[storage.data_ptr()] = storage.nbytes()
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, storage.data_ptr())
        return out


@pytest.mark.slow  # builds a model and loads the embedded tokenizer
def test_batch_size_auto_counts_what_a_slot_holds(backend):
    """--batch-size auto divides free GPU memory by what a slot holds. The parts are checked here against
    what the loop allocates: a slot's KV cache exactly, and the sampler's peak per row as measured on
    typical rows and on the worst, a row of equal scores whose top-p bucket is the whole vocabulary."""
    from tract_eval.backends.engine import slot_cache_class

    cache = slot_cache_class().allocate(backend.model, 3, 100)
    kv = sum(b.nbytes for layer in cache.layers for b in (layer.buffer_keys, layer.buffer_values))
    assert backend.slot_bytes(100) - backend.slot_bytes(0) == kv // 3
    vocab = backend.model.config.vocab_size
    processors = logits_processors(SAMPLING.repetition_penalty, 0.7)
    for logits in (torch.randn(8, vocab) * 0.3, torch.randn(8, vocab) * 8, torch.zeros(8, vocab)):
        with PeakBytes() as measured:
            sample_top_p(processors(torch.randint(0, vocab, (8, 500)), logits.clone()), torch.rand(8), SAMPLING.top_p)
        assert measured.peak / 8 + 4 * vocab <= backend.slot_bytes(0)  # + the float32 logits kept per slot
    per_slot, reserve = backend.slot_bytes(500), backend.prefill_bytes(300)
    assert reserve >= backend.prefill_bytes(0) > 0
    assert backend.batch_that_fits(reserve + 8 * per_slot - 1, 500, 300) == 7
    assert backend.batch_that_fits(0, 500, 300) == 1  # never below one sequence


@pytest.mark.slow  # builds a model and loads the embedded tokenizer
def test_loglikelihood_follows_the_chain_rule(backend, prompts):
    context, first, second = prompts[0], "The cat", " sat down."
    assert backend.encode(context) + backend.encode(first) == backend.encode(context + first)
    assert backend.encode(context + first) + backend.encode(second) == backend.encode(context + first + second)
    [(whole, n_whole, _), (head, n_head, _), (tail, n_tail, _)] = backend.loglikelihood(
        [(context, first + second), (context, first), (context + first, second)])
    assert n_whole == n_head + n_tail == len(backend.encode(first + second))
    assert whole < 0 and abs(whole - (head + tail)) <= TOLERANCE
    greedy = backend.generate([GenerationRequest("g", context)], SeededSampling(temperature=0.0, repetition_penalty=1.0,
                                                                                max_new_tokens=3, seed=0))[0][0]
    ids = greedy.token_ids
    text = backend.decode(ids)
    if backend.encode(context) + backend.encode(text) == backend.encode(context) + ids:
        assert backend.loglikelihood([(context, text)])[0][2]  # the greedy continuation is greedy
