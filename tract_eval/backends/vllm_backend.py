"""vLLM offline engine: one ``vllm.LLM`` per run, prefix caching on, tensor parallel for big models.

CoT-RAIL takes two engine calls per batch: one ``generate`` where each request samples its ``n``
CoTs (``SamplingParams.n``: the prompt is prefilled once) and stops at the delimiter, then one
batch of token-id prompts (prompt ids + CoT ids + delimiter ids + bridge ids) with
``max_tokens=1`` that returns exactly the candidates' log-probabilities
(``SamplingParams.logprob_token_ids``); on a vLLM without it, the top-k log-probabilities, with
the candidates outside them recorded as missing. The readout prompts share their prefix with the
CoT requests, so prefix caching serves most of them from the cache.

vLLM on CPU cannot read GGUF: a ``.gguf`` model is converted once to a cached safetensors folder
(``tract_eval.conversion``). Scores are read in float32 unless ``dtype`` says otherwise.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ..candidates import ScoreCandidates
from ..errors import ConfigError
from ..judge_config import SamplingConfig
from ..conversion import safetensors_from_gguf
from ..models import load_tokenizer, resolve_model
from .declaration import BackendDeclaration, option
from .base import (Backend, Completion, GenerationRequest, OnDone, ScoreRequest, loglikelihood_ids,
                   render_chat_with_tokenizer, request_seed)
from ..protocol import exclusive_sequence_logprobs, readout_after_sampled_ids, supplied_cot_context

log = logging.getLogger(__name__)


def check_vllm_quantization(options: dict) -> None:
    """engine_options={quantization: fp8} is the reference's CoT precision (TRACT inference_utils/
    generation_utils.py:35-36, unless --v100); vLLM's fp8 kernels need a CUDA GPU, so say so before loading."""
    quantization = (options.get("engine_options") or {}).get("quantization")
    if not quantization:
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"vllm engine_options quantization={quantization!r} needs a CUDA GPU (fp8: compute "
                          "capability 8.0 or newer, as the reference's A6000); torch sees none here")


@dataclass
class VLLMOptions:
    """The vllm backend's options (its dtype is the judge's): how many GPUs share the model is session-only."""

    tensor_parallel_size: int = option(1, session=True, flag="--tensor-parallel-size",
                                       help="GPUs one model is split over")
    max_model_len: int | None = option(None)
    gpu_memory_utilization: float | None = option(None)
    enable_prefix_caching: bool = option(True)
    conversion_cache_dir: str | None = option(None)
    engine_options: dict | None = option(None)


class VLLMBackend(Backend):
    name = "vllm"
    declaration = BackendDeclaration(name, VLLMOptions, loads_weights=True, check=check_vllm_quantization)

    def __init__(self, model: str | None = None, *, dtype: str = "auto", tensor_parallel_size: int = 1,
                 max_model_len: int | None = None, gpu_memory_utilization: float | None = None,
                 enable_prefix_caching: bool = True, conversion_cache_dir: str | None = None,
                 engine_options: dict | None = None):
        import vllm

        self.source = resolve_model(model)
        if self.source.adapter:
            raise ValueError(f"vllm backend: {self.source.spec} is a LoRA adapter; merge it into its base model "
                             "first (or use the transformers backend)")
        self.model_path = str(safetensors_from_gguf(self.source, conversion_cache_dir)) if self.source.gguf_file \
            else self.source.path
        self.dtype = "float32" if dtype == "auto" else dtype  # bf16 probabilities come out coarse
        self.tensor_parallel_size = int(tensor_parallel_size)
        self.enable_prefix_caching = bool(enable_prefix_caching)
        options = dict(engine_options or {})
        if max_model_len:
            options["max_model_len"] = int(max_model_len)
        if gpu_memory_utilization:
            options["gpu_memory_utilization"] = float(gpu_memory_utilization)
        self.engine_options = options
        started = time.perf_counter()
        self._tokenizer = load_tokenizer(resolve_model(self.model_path))
        self.llm = vllm.LLM(model=self.model_path, dtype=self.dtype, tensor_parallel_size=self.tensor_parallel_size,
                            enable_prefix_caching=self.enable_prefix_caching, seed=0,
                            disable_log_stats=False,  # keeps the engine's token counters for describe()
                            **options)
        self.load_seconds = time.perf_counter() - started
        self.vllm_version = vllm.__version__
        self._exact_readout = "logprob_token_ids" in vllm.SamplingParams.__struct_fields__
        self.max_logprobs = self.llm.llm_engine.model_config.max_logprobs
        # engine token counters per phase: prompt tokens, those served from the prefix cache, generated
        self.stats = {phase: {"prompt_tokens": 0, "cached_prompt_tokens": 0, "generated_tokens": 0}
                      for phase in ("cot", "readout", "loglikelihood")}

    # -- interface -----------------------------------------------------------------
    def tokenizer(self):
        return self._tokenizer

    def render_chat(self, messages: list[dict], response_prefix: str = "") -> str:
        return render_chat_with_tokenizer(self._tokenizer, messages, response_prefix)

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "model": self.source.spec,
            "model_path": self.model_path,
            "converted_from_gguf": self.source.gguf_file,
            "dtype": self.dtype,
            "tensor_parallel_size": self.tensor_parallel_size,
            "enable_prefix_caching": self.enable_prefix_caching,
            "engine_options": self.engine_options,
            "readout": "logprob_token_ids (exact)" if self._exact_readout else f"top-{self.max_logprobs} logprobs",
            "vllm_version": self.vllm_version,
            "load_seconds": round(self.load_seconds, 2),
            "engine_tokens": {phase: dict(counts) for phase, counts in self.stats.items()},
        }

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig, seed: int,
                 on_done: OnDone | None = None, batch_size: int | str | None = None) -> list[list[Completion]]:
        from vllm import SamplingParams, TokensPrompt

        prompts = [self.encode(r.prompt) for r in requests]
        params = []
        for request in requests:
            stop = ([request.candidates.delimiter] if request.candidates is not None else []) + list(request.stop)
            params.append(SamplingParams(
                n=request.n,
                # vLLM seeds sample i with seed + i: the same streams as the OpenAI backend against `vllm serve`
                seed=request_seed(seed, request.key) + request.first_index,
                temperature=sampling.temperature, top_p=sampling.top_p,
                repetition_penalty=sampling.repetition_penalty, max_tokens=sampling.max_new_tokens,
                stop=stop or None, include_stop_str_in_output=True, skip_special_tokens=False))
        outputs = self._run([TokensPrompt(prompt_token_ids=p) for p in prompts], params, "cot")

        results: list[list[Completion]] = []
        readouts: list[tuple[int, int, list[int], ScoreCandidates]] = []  # (request, sample, context ids, candidates)
        for r, (request, prompt_ids, output) in enumerate(zip(requests, prompts, outputs)):
            completions = []
            for i, sample in enumerate(sorted(output.outputs, key=lambda o: o.index)):
                completion, readout_ids = self._finish_cot(request, prompt_ids, sample)
                completions.append(completion)
                if readout_ids is not None:
                    readouts.append((r, i, readout_ids, request.candidates))
            results.append(completions)
        for (r, i, _, _), logprobs in zip(readouts, self._readout([(ids, c) for _, _, ids, c in readouts])):
            results[r][i].candidate_logprobs, results[r][i].missing_candidates = logprobs
        if on_done:
            for r, completions in enumerate(results):
                on_done(r, completions)
        return results

    def score(self, requests: list[ScoreRequest]) -> list[Completion]:
        completions, contexts = [], []
        for request in requests:
            text, forced, cut, context = supplied_cot_context(
                self.encode, request.prompt, request.continuation, request.candidates, request.cut_marker,
                request.stop, request.readout)
            contexts.append((context, request.candidates))
            completions.append(Completion(text=text, finish_reason="forced", generated_tokens=0, forced_text=forced,
                                          cut=cut, token_ids=context[len(self.encode(request.prompt)):]))
        for completion, (logprobs, missing) in zip(completions, self._readout(contexts)):
            completion.candidate_logprobs, completion.missing_candidates = logprobs, missing
        return completions

    def candidate_logprobs(self, contexts: list[str], candidates: ScoreCandidates) -> list[dict[int, float]]:
        results = []
        for context, (logprobs, missing) in zip(contexts, self._readout([(self.encode(c), candidates)
                                                                        for c in contexts])):
            if missing:  # only without logprob_token_ids (an older vLLM): the top-k left them out
                raise RuntimeError(f"vllm backend: candidates {missing} are outside the top-{self.max_logprobs} "
                                   f"log-probabilities after {context[-60:]!r}; raise max_logprobs in engine_options")
            results.append(logprobs)
        return results

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[tuple[float, int, bool]]:
        """One engine call: each pair's context + continuation ids as a prompt with ``prompt_logprobs=1``
        (the prompt token's own log-probability and rank at every position; rank 1 is greedy)."""
        from vllm import SamplingParams, TokensPrompt

        encoded = [loglikelihood_ids(self.encode, context, continuation) for context, continuation in pairs]
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1)
        outputs = self._run([TokensPrompt(prompt_token_ids=c + t) for c, t in encoded], params, "loglikelihood")
        results = []
        for (context_ids, ids), output in zip(encoded, outputs):
            positions = output.prompt_logprobs[len(context_ids):]
            if len(positions) != len(ids) or any(p is None or t not in p for p, t in zip(positions, ids)):
                raise RuntimeError("vllm backend: the engine returned no prompt log-probabilities for the continuation")
            steps = [p[t] for p, t in zip(positions, ids)]
            results.append((sum(s.logprob for s in steps), len(ids), all(s.rank == 1 for s in steps)))
        return results

    # -- internals -----------------------------------------------------------------
    def _counters(self) -> dict[str, float]:
        names = {"vllm:prompt_tokens": "prompt_tokens", "vllm:prompt_tokens_cached": "cached_prompt_tokens",
                 "vllm:generation_tokens": "generated_tokens"}
        return {names[m.name]: m.value for m in self.llm.get_metrics() if m.name in names}

    def _run(self, prompts, params, phase: str):
        before = self._counters()
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        after = self._counters()
        for key in self.stats[phase]:
            self.stats[phase][key] += int(after.get(key, 0) - before.get(key, 0))
        return outputs

    def _finish_cot(self, request: GenerationRequest, prompt_ids: list[int], sample):
        """The Completion of one sampled CoT, and (for RAIL) the ids to read the score after."""
        candidates = request.candidates
        reason = "length" if sample.finish_reason == "length" else "stop" if isinstance(sample.stop_reason, str) else "eos"
        ids = list(sample.token_ids)
        if candidates is None:
            if sample.finish_reason == "stop" and ids and ids[-1] in self._tokenizer.all_special_ids:
                ids = ids[:-1]
            text = self.decode(prompt_ids + ids)[len(self.decode(prompt_ids)):]
            return Completion(text=text, finish_reason=reason, generated_tokens=len(sample.token_ids),
                              token_ids=ids), None
        at_delimiter = sample.stop_reason == candidates.delimiter
        text, forced_text, cut, context_ids = readout_after_sampled_ids(
            self._tokenizer, prompt_ids, ids, sample.finish_reason, at_delimiter, candidates, request.cut_marker,
            request.stop, request.readout)
        return Completion(text=text, finish_reason="delimiter" if at_delimiter else reason,
                          generated_tokens=len(sample.token_ids), forced_text=forced_text, cut=cut,
                          token_ids=context_ids[len(prompt_ids):]), context_ids

    def _readout(self, contexts: list[tuple[list[int], ScoreCandidates]]) -> list[tuple[dict[int, float], list[int]]]:
        """One engine call: the candidates' raw log-probabilities after each context (ids)."""
        from vllm import SamplingParams, TokensPrompt

        jobs = []  # (context index, prefix of candidate ids, next ids wanted)
        for c, (ids, candidates) in enumerate(contexts):
            prefixes = sorted({seq[:j] for seq in candidates.sequences for j in range(len(seq))})
            for prefix in prefixes:
                wanted = sorted({seq[len(prefix)] for seq in candidates.sequences if seq[:len(prefix)] == prefix})
                jobs.append((c, prefix, wanted))
        prompts, params = [], []
        for c, prefix, wanted in jobs:
            prompts.append(TokensPrompt(prompt_token_ids=contexts[c][0] + list(prefix)))
            if self._exact_readout:
                params.append(SamplingParams(max_tokens=1, temperature=0.0, logprobs=len(wanted),
                                             logprob_token_ids=wanted))
            else:
                params.append(SamplingParams(max_tokens=1, temperature=0.0, logprobs=self.max_logprobs))
        outputs = self._run(prompts, params, "readout") if prompts else []
        steps: dict[tuple[int, tuple], dict[int, float]] = {}
        for (c, prefix, wanted), output in zip(jobs, outputs):
            first = output.outputs[0].logprobs[0]
            steps[(c, prefix)] = {t: first[t].logprob for t in wanted if t in first}
        results = []
        for c, (_, candidates) in enumerate(contexts):
            totals, missing = {}, []
            for score, seq in zip(candidates.scores, candidates.sequences):
                parts = [steps[(c, seq[:j])].get(seq[j]) for j in range(len(seq))]
                if any(p is None for p in parts):
                    missing.append(score)
                else:
                    totals[score] = sum(parts)
            if not candidates.single_token and not missing:
                totals = exclusive_sequence_logprobs(totals, candidates)
            results.append((totals, missing))
        return results
