"""Hugging Face transformers backend: CPU or CUDA, HF ids, local folders, GGUF files, LoRA adapters.

CoT-RAIL costs one generation pass per CoT: each prompt is prefilled once and
its KV cache shared by its ``n`` CoTs; a CoT that stops at the delimiter has
the bridge tokens fed through the same cache, and the score distribution is
read from that step's logits. A CoT that never writes the delimiter gets it
forced the same way (a few decode steps); when it is cut at the cut marker,
the tokens after the cut are masked out of the cache instead of recomputed.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from ..candidates import ScoreCandidates
from ..config import SamplingConfig
from ..models import ModelSource, check_model_args, load_kwargs, load_tokenizer, resolve_model
from .base import Backend, Completion, GenerationRequest, OnDone, ScoreRequest, render_chat_with_tokenizer, stream_seed
from ..protocol import exclusive_sequence_logprobs, finish_cot, kept_prefix_length

log = logging.getLogger(__name__)


@dataclass
class _Stream:
    request: GenerationRequest
    request_index: int
    index: int  # which of the request's n continuations
    row: int  # row in the batch tensors
    generator: object
    prompt_ids: list[int]
    generated: list[int] = field(default_factory=list)
    queue: list[int] = field(default_factory=list)  # ids to feed next, one per step
    forcing: bool = False  # the CoT is over; feeding forced ids, then reading the score
    forced_text: str = ""
    finish_reason: str = ""
    cut: bool = False
    kept: int = 0  # generated ids that stay visible (a cut masks the rest)
    forced_ids: list[int] = field(default_factory=list)
    mask_back: int = 0  # fed cache columns to hide at the next step (a cut)
    done: bool = False

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)
    completion: Completion | None = None


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, model: str | None = None, device: str = "auto", dtype: str = "auto",
                 model_args: dict | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        # from_pretrained options (--model-args): revision, trust_remote_code, attn_implementation, device_map, ...
        self.model_args = check_model_args(model_args)
        self.source: ModelSource = resolve_model(model, revision=self.model_args.get("revision"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
        self.dtype = getattr(torch, dtype)
        kwargs = load_kwargs(self.source, self.model_args)
        started = time.perf_counter()
        self._tokenizer = load_tokenizer(self.source, self.model_args)
        model_obj = AutoModelForCausalLM.from_pretrained(self.source.path, dtype=self.dtype, **kwargs)
        if self.source.adapter:
            from peft import PeftModel

            model_obj = PeftModel.from_pretrained(model_obj, self.source.adapter).merge_and_unload()
        if "device_map" in kwargs or "quantization_config" in kwargs:  # placed by accelerate / bitsandbytes
            self.device = model_obj.device
            self.model = model_obj.eval()
        else:
            self.model = model_obj.to(self.device).eval()
        self.load_seconds = time.perf_counter() - started
        self._tokenizer.padding_side = "left"
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._eos_ids = self._collect_eos_ids()

    # -- interface -----------------------------------------------------------------
    def tokenizer(self):
        return self._tokenizer

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "model": self.source.spec,
            "model_path": self.source.path,
            "gguf_file": self.source.gguf_file,
            "adapter": self.source.adapter,
            "model_args": self.model_args,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "load_seconds": round(self.load_seconds, 2),
        }

    def render_chat(self, messages: list[dict], response_prefix: str = "") -> str:
        return render_chat_with_tokenizer(self._tokenizer, messages, response_prefix)

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig, seed: int,
                 on_done: OnDone | None = None) -> list[list[Completion]]:
        import torch

        with torch.inference_mode():
            return self._generate(requests, sampling, seed, on_done)

    def score(self, requests: list[ScoreRequest]) -> list[Completion]:
        import torch

        out: list[Completion] = []
        with torch.inference_mode():
            for request in requests:
                kept, forced, cut = finish_cot(request.continuation, request.candidates.delimiter, request.cut_marker,
                                              request.stop)
                cot_ids = self.encode(kept + forced) + list(request.candidates.bridge_ids)
                ids = self.encode(request.prompt) + cot_ids
                logprobs = self.readout_logprobs([ids], request.candidates)[0]
                out.append(Completion(
                    text=kept + forced + request.candidates.bridge_text,
                    finish_reason="forced",
                    generated_tokens=0,
                    forced_text=forced,
                    cut=cut,
                    candidate_logprobs=logprobs,
                    token_ids=cot_ids,
                ))
        return out

    # -- internals -----------------------------------------------------------------
    def _collect_eos_ids(self) -> set[int]:
        ids = set()
        config_eos = getattr(self.model.generation_config, "eos_token_id", None)
        for value in (config_eos, self._tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif value:
                ids.update(value)
        return ids

    def _forward(self, input_ids, attention_mask, position_ids, cache):
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,  # only the last position is read; skips a (batch x prompt x vocab) matrix
        )
        return out.logits[:, -1, :].float(), out.past_key_values

    def readout_logprobs(self, sequences: list[list[int]], candidates: ScoreCandidates) -> list[dict[int, float]]:
        """Independent full forward passes: candidate log-probs after each id sequence."""
        import torch

        results = []
        with torch.inference_mode():
            for ids in sequences:
                input_ids = torch.tensor([ids], device=self.device)
                logits = self.model(input_ids=input_ids, logits_to_keep=1).logits[0, -1].float()
                logprobs = torch.log_softmax(logits, dim=-1)
                results.append(self._candidate_logprobs(logprobs, ids, candidates))
        return results

    def _candidate_logprobs(self, logprobs, context_ids: list[int], candidates: ScoreCandidates) -> dict[int, float]:
        if candidates.single_token:
            return {s: float(logprobs[seq[0]]) for s, seq in zip(candidates.scores, candidates.sequences)}
        return self._sequence_logprobs(logprobs, context_ids, candidates)

    def _sequence_logprobs(self, first_logprobs, context_ids: list[int], candidates: ScoreCandidates) -> dict[int, float]:
        """Multi-token candidates (e.g. "10"): log P(sequence), minus the mass of longer candidates it prefixes."""
        import torch

        totals: dict[int, float] = {}
        for score, seq in zip(candidates.scores, candidates.sequences):
            total = float(first_logprobs[seq[0]])
            if len(seq) > 1:
                ids = torch.tensor([context_ids + list(seq[:-1])], device=self.device)
                logits = self.model(input_ids=ids).logits[0, -(len(seq) - 1):].float()
                steps = torch.log_softmax(logits, dim=-1)
                total += float(sum(steps[i, tok] for i, tok in enumerate(seq[1:])))
            totals[score] = total
        return exclusive_sequence_logprobs(totals, candidates)

    def _sample(self, logits, streams: list[_Stream], seen, sampling: SamplingConfig):
        """Repetition penalty (HF semantics), temperature, top-p, then one draw per row from its own stream."""
        import torch

        scores = logits.clone()
        if sampling.repetition_penalty != 1.0:
            penalised = torch.where(scores < 0, scores * sampling.repetition_penalty, scores / sampling.repetition_penalty)
            scores = torch.where(seen, penalised, scores)
        if sampling.greedy:
            return scores.argmax(dim=-1).tolist()
        scores = scores / sampling.temperature
        if sampling.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
            cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
            # drop tokens once the mass before them already exceeds top_p (the top token always stays)
            drop_sorted = (cumulative - torch.softmax(sorted_scores, dim=-1)) > sampling.top_p
            drop = drop_sorted.scatter(-1, order, drop_sorted)
            scores = scores.masked_fill(drop, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        chosen = []
        for row, stream in enumerate(streams):
            draw = torch.multinomial(probs[row].cpu(), 1, generator=stream.generator)
            chosen.append(int(draw))
        return chosen

    def _generate(self, requests, sampling, seed, on_done):
        import torch

        tok = self._tokenizer
        prompts = [self.encode(r.prompt) for r in requests]
        width = max(len(p) for p in prompts)
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, cache = self._forward(input_ids, mask, positions, None)

        # share each prompt's prefill among its n continuations
        repeats = [r.n for r in requests]
        if any(n != 1 for n in repeats):
            index = torch.repeat_interleave(torch.arange(len(requests), device=self.device),
                                            torch.tensor(repeats, device=self.device))
            cache.reorder_cache(index)
            logits, mask = logits[index], mask[index]
        streams: list[_Stream] = []
        for request_index, (req, prompt) in enumerate(zip(requests, prompts)):
            for i in range(req.n):
                gen = torch.Generator().manual_seed(stream_seed(seed, req.key, req.first_index + i))
                streams.append(_Stream(req, request_index, i, len(streams), gen, prompt))
        vocab = logits.shape[-1]
        seen = torch.zeros((len(streams), vocab), dtype=torch.bool, device=self.device)
        for s in streams:  # HF's repetition penalty counts the prompt's ids too
            seen[s.row, torch.tensor(s.prompt_ids, device=self.device)] = True
        next_pos = [s.prompt_len for s in streams]
        by_request = [[s for s in streams if s.request_index == i] for i in range(len(requests))]
        remaining = [len(group) for group in by_request]

        active = list(streams)  # row order == tensor row order
        self._advance(active, logits, seen, sampling)
        while True:
            if on_done:
                for s in active:
                    if s.done:
                        remaining[s.request_index] -= 1
                        if remaining[s.request_index] == 0:
                            on_done(s.request_index, [t.completion for t in by_request[s.request_index]])
            keep = [i for i, s in enumerate(active) if not s.done]
            if not keep:
                break
            if len(keep) != len(active):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                mask, seen = mask[index], seen[index]
                next_pos = [next_pos[i] for i in keep]
                active = [active[i] for i in keep]
            feed = [s.queue.pop(0) for s in active]
            step_ids = torch.tensor(feed, device=self.device).unsqueeze(-1)
            mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype, device=self.device)], dim=-1)
            current = mask.shape[1] - 1
            for row, s in enumerate(active):
                if s.mask_back:
                    # a cut: hide the CoT ids after the cut point from this and every later step
                    mask[row, current - s.mask_back: current] = 0
                    next_pos[row] = s.prompt_len + s.kept
                    s.mask_back = 0
            position_ids = torch.tensor(next_pos, device=self.device).unsqueeze(-1)
            next_pos = [p + 1 for p in next_pos]
            logits, cache = self._forward(step_ids, mask, position_ids, cache)
            self._advance(active, logits, seen, sampling)
        return [[s.completion for s in group] for group in by_request]

    def _advance(self, active: list[_Stream], logits, seen, sampling: SamplingConfig) -> None:
        """After a forward step: read scores for finished forcing rows, sample for generating rows."""
        import torch

        generating = [i for i, s in enumerate(active) if not s.forcing]
        for i, s in enumerate(active):
            if s.forcing and not s.queue:
                logprobs = torch.log_softmax(logits[i], dim=-1)
                context = s.prompt_ids + s.generated[: s.kept] + s.forced_ids
                scores = self._candidate_logprobs(logprobs, context, s.request.candidates)
                self._complete(s, candidate_logprobs=scores)
        if not generating:
            return
        rows = torch.tensor(generating, device=self.device)
        chosen = self._sample(logits[rows], [active[i] for i in generating], seen[rows], sampling)
        for i, token in zip(generating, chosen):
            s = active[i]
            seen[i, token] = True
            self._after_token(s, token, sampling)

    def _after_token(self, s: _Stream, token: int, sampling: SamplingConfig) -> None:
        candidates = s.request.candidates
        if token in self._eos_ids:
            reason = "eos"
        else:
            s.generated.append(token)
            reason = ""
            if candidates is not None and self._ends_with_delimiter(s.generated, candidates.delimiter):
                reason = "delimiter"
            elif s.request.stop and self._hits_stop(s.generated, s.request.stop):
                reason = "stop"
            elif len(s.generated) >= sampling.max_new_tokens:
                reason = "length"
        if not reason:
            s.queue = [token]
            return
        s.finish_reason = reason
        if candidates is None:
            self._complete(s)
            return
        self._start_forcing(s, candidates, fed=len(s.generated) if reason == "eos" else len(s.generated) - 1)

    def _ends_with_delimiter(self, generated: list[int], delimiter: str) -> bool:
        tail = self.decode(generated[-(len(delimiter) + 2):])
        return tail.endswith(delimiter)

    def _hits_stop(self, generated: list[int], stops) -> bool:
        """A stop string ends in the last token (it may sit inside a token, so search a short tail)."""
        tail = self.decode(generated[-(max(len(stop) for stop in stops) + 2):])
        return any(stop in tail for stop in stops)

    def _start_forcing(self, s: _Stream, candidates: ScoreCandidates, fed: int) -> None:
        """Plan the ids to feed before the readout: rest of the CoT, forced delimiter, bridge.

        ``fed`` generated ids are already in the cache (the last sampled one is not,
        unless the CoT ended with EOS, which is never fed).
        """
        text = self.decode(s.generated)
        kept_text, forced_text, cut = finish_cot(text, candidates.delimiter, s.request.cut_marker, s.request.stop)
        s.cut = cut
        s.kept = kept_prefix_length(self.decode, s.generated, kept_text) if cut else len(s.generated)
        if cut:  # the cut may fall inside a token: force the text between the boundary and the cut
            forced_text = kept_text[len(self.decode(s.generated[: s.kept])):] + forced_text
        s.forced_text = forced_text
        s.forced_ids = (self.encode(forced_text) if forced_text else []) + list(candidates.bridge_ids)
        if s.kept >= fed:
            s.queue = s.generated[fed: s.kept] + s.forced_ids
        else:
            s.mask_back = fed - s.kept
            s.queue = list(s.forced_ids)
        s.forcing = True

    def _complete(self, s: _Stream, candidate_logprobs: dict[int, float] | None = None) -> None:
        ids = s.generated[: s.kept] + s.forced_ids if s.forcing else list(s.generated)
        # decode with the prompt so tokenizers that drop a leading space keep it
        text = self.decode(s.prompt_ids + ids)[len(self.decode(s.prompt_ids)):]
        s.completion = Completion(
            text=text,
            finish_reason=s.finish_reason,
            generated_tokens=len(s.generated),
            forced_text=s.forced_text,
            cut=s.cut,
            candidate_logprobs=candidate_logprobs,
            token_ids=ids,
        )
        s.done = True
