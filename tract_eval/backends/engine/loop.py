"""The judge loop: continuous batching over a preallocated KV cache (the engine's contract is in ``__init__``).

:func:`run_judge_loop` is the entry point; :class:`JudgeLoop` does the work for one call, over a
host (:class:`EngineHost`: the model and its tokenizer, as :class:`~tract_eval.backends.
transformers_backend.TransformersBackend` holds them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ContextManager, Protocol

from ...candidates import ScoreCandidates
from ...judge_config import SeededSampling
from ...protocol import common_prefix_length, finish_cot, kept_prefix_length, readout_text
from ..base import Completion, GenerationRequest, OnDone, stream_seed
from .forward import forward_last, left_padded
from .readout import candidate_totals, candidate_variants
from .slot_cache import slot_cache_class


class EngineHost(Protocol):
    """What the judge loop reads from the object that holds the model, and nothing more."""

    model: object  # a transformers causal LM in eval mode (forward takes past_key_values, logits_to_keep)
    device: object  # the torch.device the model runs on
    batch_prefill: bool  # prefill several prompts per padded forward (accelerators) or one per forward (CPU)
    eos_ids: set[int] | frozenset[int]  # ids that end a continuation; never fed, never in token_ids

    def tokenizer(self): ...  # its pad_token_id pads prompt batches

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def may_end(self, text: str, token: int, inside: bool) -> bool: ...  # may ``token`` end (inside: hold) ``text``?

    def auto_batch_size(self, capacity: int, longest_prompt: int) -> int: ...  # batch_size="auto"

    def inference(self) -> ContextManager: ...  # no autograd, and the host's output layer (output_head.py)


@dataclass
class _Stream:
    """One continuation (CoT) of a request, with its own random stream."""

    request: GenerationRequest
    request_index: int
    index: int  # which of the request's n continuations
    row: int  # its slot in the batch tensors (-1 while waiting)
    seed: int  # stream_seed(seed, key, first_index + index)
    prompt_ids: list[int]
    generated: list[int] = field(default_factory=list)
    base: int = 0  # cache column where its prompt starts
    fed: int = 0  # generated ids already in the cache
    forcing: bool = False  # the CoT is over; the forced ids are fed and the score read
    forced_text: str = ""
    finish_reason: str = ""
    cut: bool = False
    # the readout: the whole context the score is read after (prompt included), and how many of its
    # leading ids are the cached prompt + CoT ids (the cached ids after them are hidden, the rest fed)
    context_ids: list[int] = field(default_factory=list)
    reuse: int = 0
    done: bool = False
    completion: Completion | None = None

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)


@dataclass
class _Prefill:
    """A prompt's KV cache and next-token logits, shared by its continuations until all have a slot."""

    cache: object
    row: int
    logits: object


class JudgeLoop:
    """Continuous batching: ``batch_size`` slots decode together; when a continuation finishes, the
    next waiting one (requests longest prompt first, each prompt prefilled once for all its CoTs)
    takes its slot. A finished RAIL CoT is read out in one chunked forward over its slot's cache:
    the rest of the CoT, the forced delimiter and the bridge (plus the first tokens of multi-token
    candidates) go through at once, and the cut path masks the CoT tokens after the cut."""

    READOUT_ROWS = 32  # finished CoTs read out per chunked forward (bounds its logits' memory)
    PREFILL_TOKENS = 65536  # padded prompt tokens per prefill forward (bounds its memory)

    def __init__(self, host: EngineHost, requests, sampling: SeededSampling,
                 on_done: OnDone | None, batch_size: int | str | None, shrink_idle_slots: bool = True):
        import torch

        from .sampling import logits_processors

        self.host, self.model, self.device = host, host.model, host.device
        self.sampling, self.on_done, self.shrink_idle_slots = sampling, on_done, shrink_idle_slots
        self.requests = list(requests)
        prompts = [host.encode(r.prompt) for r in self.requests]
        self.prompt_lens = [len(p) for p in prompts]
        self.by_request: list[list[_Stream]] = []
        for request_index, (request, prompt) in enumerate(zip(self.requests, prompts)):
            self.by_request.append([
                _Stream(request, request_index, i, -1,
                        stream_seed(sampling.seed, request.key, request.first_index + i), prompt)
                for i in range(request.n)])
        self.remaining = [r.n for r in self.requests]
        total = sum(self.remaining)
        longest = max((len(p) for p in prompts), default=0)
        # room for the longest prompt and CoT, plus slack so compaction is rare and a finished CoT's
        # readout (its delimiter and bridge, and any CoT ids re-fed) usually fits past the head
        self.width = longest + sampling.max_new_tokens + 1
        capacity = self.width + max(64, sampling.max_new_tokens // 2)
        if batch_size == "auto":
            batch_size = host.auto_batch_size(capacity, longest)
        self.slots = max(1, min(batch_size or total, total))
        # A refill prefills up to a slot-full of waiting prompts at once (one padded forward where
        # batch_prefill, else one forward each), not a forward per freed slot whenever one frees. The
        # prompts prefilled ahead wait outside the slots, so under --batch-size auto (slots sized to
        # fill the memory) refills prefill only what the free slots take.
        self.prefill_group = 1 if batch_size == "auto" else self.slots
        self.pending = sorted(range(len(self.requests)), key=lambda i: (-len(prompts[i]), i))
        self.waiting: list[tuple[_Stream, _Prefill]] = []
        self.slot_streams: list[_Stream | None] = [None] * self.slots
        self.cache = slot_cache_class().allocate(self.model, self.slots, capacity) if total else None
        self.mask = torch.zeros((self.slots, capacity), dtype=torch.long, device=self.device)
        self.ids = torch.zeros((self.slots, self.width), dtype=torch.long, device=self.device)
        self.positions = [0] * self.slots
        self.logits = None
        self.processors = logits_processors(sampling.repetition_penalty, sampling.temperature)
        self.pad = host.tokenizer().pad_token_id

    # -- main loop -------------------------------------------------------------------------
    def run(self) -> None:
        while True:
            self._admit()
            active = [s for s in self.slot_streams if s is not None]
            if not active:
                return
            tokens = self._sample(active)
            finished = []
            for stream, token in zip(active, tokens):
                if self._after_token(stream, token):
                    finished.append(stream)
            readouts = [s for s in finished if s.forcing]
            groups: dict[int, list[_Stream]] = {}
            for s in readouts:  # one readout per candidate set, a bounded number of rows at a time
                groups.setdefault(id(s.request.candidates), []).append(s)
            for group in groups.values():
                for start in range(0, len(group), self.READOUT_ROWS):
                    self._readout(group[start: start + self.READOUT_ROWS])
            for stream in finished:
                if not stream.forcing:
                    self._complete(stream)
                self.slot_streams[stream.row] = None
                self._done(stream)
            continuing = [s for s in active if not s.done]
            if continuing:
                self._decode_step(continuing)

    def _done(self, stream: _Stream) -> None:
        self.remaining[stream.request_index] -= 1
        if self.on_done and self.remaining[stream.request_index] == 0:
            self.on_done(stream.request_index, [s.completion for s in self.by_request[stream.request_index]])

    # -- admission -------------------------------------------------------------------------
    def _admit(self) -> None:
        import torch

        free = [i for i, s in enumerate(self.slot_streams) if s is None]
        if not free or not (self.waiting or self.pending):
            self._shrink_when_draining()
            return
        while len(self.waiting) < len(free) and self.pending:
            group, streams = [], 0
            room = max(len(free), self.prefill_group)
            # pending is longest first, so a group padded to its first prompt holds len(group) x that many tokens
            while self.pending and (not group or (streams + self.requests[self.pending[0]].n <= room
                                                  and (len(group) + 1) * self.prompt_lens[group[0]] <= self.PREFILL_TOKENS)):
                index = self.pending.pop(0)
                group.append(index)
                streams += self.requests[index].n
            self._prefill(group)
        placed = []
        while free and self.waiting:
            stream, prefill = self.waiting.pop(0)
            placed.append((free.pop(0), stream, prefill))
        longest = max(s.prompt_len for _, s, _ in placed)
        if longest > self.cache.length:  # make room on the left for a longer prompt
            shift = longest - self.cache.length
            self.cache.move_columns(0, self.cache.length, shift)
            self.mask[:, shift: shift + self.cache.length] = self.mask[:, : self.cache.length].clone()
            self.mask[:, :shift] = 0
            for s in self.slot_streams:
                if s is not None:
                    s.base += shift
            self.cache.set_length(longest)
        head = self.cache.length
        if self.logits is None:
            self.logits = torch.zeros((self.slots, placed[0][2].logits.shape[-1]), device=self.device)
        for slot, stream, prefill in placed:
            stream.row, stream.base = slot, head - stream.prompt_len
            self.slot_streams[slot] = stream
            self.cache.write_prompt(slot, prefill.cache, prefill.row, stream.prompt_len)
            self.mask[slot] = 0
            self.mask[slot, stream.base: head] = 1
            prompt = torch.tensor(stream.prompt_ids, device=self.device)
            self.ids[slot] = prompt[0]  # padding that repeats a prompt id never changes the penalty
            self.ids[slot, : stream.prompt_len] = prompt
            self.positions[slot] = stream.prompt_len
            self.logits[slot] = prefill.logits

    def _prefill(self, group: list[int]) -> None:
        if len(group) > 1 and not self.host.batch_prefill:
            for index in group:
                self._prefill([index])
            return
        input_ids, mask, positions = left_padded([self.by_request[i][0].prompt_ids for i in group], self.pad,
                                                 self.device)
        logits, cache = forward_last(self.model, input_ids, mask, positions, None)
        for row, index in enumerate(group):
            prefill = _Prefill(cache, row, logits[row])
            self.waiting.extend((stream, prefill) for stream in self.by_request[index])

    def _shrink_when_draining(self) -> None:
        """Nothing left to admit: once half the slots are idle, drop them so steps stop paying for them."""
        import torch

        live = [i for i, s in enumerate(self.slot_streams) if s is not None]
        if not self.shrink_idle_slots or not live or len(live) > len(self.slot_streams) // 2:
            return
        index = torch.tensor(live, device=self.device)
        self.cache.keep_slots(index)
        self.mask, self.ids, self.logits = self.mask[index], self.ids[index], self.logits[index]
        self.positions = [self.positions[i] for i in live]
        self.slot_streams = [self.slot_streams[i] for i in live]
        for row, s in enumerate(self.slot_streams):
            s.row = row

    # -- sampling --------------------------------------------------------------------------
    def _sample(self, active: list[_Stream]) -> list[int]:
        import numpy as np
        import torch

        from .sampling import sample_top_p, stream_uniforms

        rows = torch.tensor([s.row for s in active], device=self.device)
        scores = self.logits[rows]
        scores = self.processors(self.ids[rows], scores)
        if self.sampling.greedy:
            chosen = scores.argmax(dim=-1)
        else:
            uniforms = stream_uniforms(np.array([s.seed for s in active], dtype=np.uint64),
                                       np.array([len(s.generated) for s in active], dtype=np.uint64))
            chosen = sample_top_p(scores, torch.from_numpy(uniforms).to(self.device), self.sampling.top_p)
        columns = torch.tensor([min(s.prompt_len + len(s.generated), self.width - 1) for s in active],
                               device=self.device)
        self.ids[rows, columns] = chosen
        return chosen.tolist()  # the one host synchronisation of the step

    # -- decoding --------------------------------------------------------------------------
    def _decode_step(self, continuing: list[_Stream]) -> None:
        import torch

        # Columns before the earliest live prompt are dead in every slot but still read by each step's
        # attention: drop them when the cache is full, or once they are an eighth of what a step reads
        # (the copy costs about one step's read; later occupants of a slot leave such columns behind).
        dead = min(s.base for s in continuing)
        if self.cache.length >= self.cache.capacity or dead >= max(16, self.cache.length // 8):
            self._compact(dead)
        head = self.cache.length
        feed = [self.pad] * len(self.slot_streams)
        for s in continuing:
            feed[s.row] = s.generated[-1]
            s.fed = len(s.generated)
        self.mask[:, head] = 1  # idle slots attend to their own column: garbage, but never NaN
        position_ids = torch.tensor(self.positions, device=self.device).unsqueeze(-1)
        for s in continuing:
            self.positions[s.row] += 1
        logits, _ = forward_last(self.model, torch.tensor(feed, device=self.device).unsqueeze(-1),
                                 self.mask[:, : head + 1], position_ids, self.cache)
        self.logits = logits

    def _compact(self, start: int) -> None:
        """Drop the leading ``start`` columns, which no live slot uses (the cache keeps a fixed size)."""
        if start == 0:
            raise RuntimeError("KV cache full: a continuation outgrew prompt + max_new_tokens")
        length = self.cache.length
        self.cache.move_columns(start, length, 0)
        self.mask[:, : length - start] = self.mask[:, start:length].clone()
        self.mask[:, length - start:] = 0
        self.cache.set_length(length - start)
        for s in self.slot_streams:
            if s is not None:
                s.base -= start

    # -- readout -----------------------------------------------------------------------------
    def _readout(self, streams: list[_Stream]) -> None:
        """Candidate log-probs for finished RAIL CoTs, one chunked forward over their slots' caches."""
        import torch

        candidates = streams[0].request.candidates
        variants = candidate_variants(candidates)
        rows, chunks, starts, hidden = [], [], [], []
        for s in streams:
            queue = s.context_ids[s.reuse:]
            for variant in variants:
                rows.append(s.row)
                chunks.append(queue + list(variant[:-1]))
                starts.append(s.reuse)
                hidden.append((s.base + s.reuse, s.base + s.prompt_len + s.fed))
        length = self.cache.length
        span = max(len(c) for c in chunks)
        index = torch.tensor(rows, device=self.device)
        cache = self._readout_cache(rows, span)
        # chunks are right-aligned (padded on the left, padding masked), so every row's readout positions
        # are its last ones and only those get logits: a retokenized CoT re-fed here costs no vocab matrix
        pads = [span - len(c) for c in chunks]
        extra = torch.tensor([[0] * p + [1] * (span - p) for p in pads], dtype=self.mask.dtype, device=self.device)
        mask = torch.cat([self.mask[index, :length], extra], dim=-1)
        for row, (lo, hi) in enumerate(hidden):
            if hi > lo:  # cached ids the readout context does not share (a cut, a retokenization) stay out of sight
                mask[row, lo:hi] = 0
        input_ids = torch.tensor([[self.pad] * p + c for p, c in zip(pads, chunks)], device=self.device)
        offsets = torch.tensor([start - p for start, p in zip(starts, pads)], device=self.device)
        positions = (offsets.unsqueeze(-1) + torch.arange(span, device=self.device)).clamp(min=0)
        keep = max(len(v) for v in variants) or 1  # positions read per row: 1, or a multi-token candidate's length
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                         past_key_values=cache, use_cache=True, logits_to_keep=keep)
        logprobs = torch.log_softmax(out.logits[:, -keep:].float(), dim=-1)
        for number, s in enumerate(streams):
            own = logprobs[number * len(variants): (number + 1) * len(variants)]
            self._complete(s, candidate_logprobs=candidate_totals(own, variants, candidates))

    def _readout_cache(self, rows: list[int], span: int):
        """The cache a readout of ``rows`` (one per finished slot or candidate variant) runs over.

        Adjacent finished slots, one row each, are read out in place: the readout writes its ``span``
        columns past the head, which only those slots' later occupants would reach, and they
        overwrite the columns before reading them. Otherwise (scattered slots, several variants of one
        slot, no room past the head) the rows are copied out first."""
        import torch

        if rows == list(range(rows[0], rows[0] + len(rows))) and self.cache.length + span <= self.cache.capacity:
            return self.cache.view(rows[0], len(rows))
        return self.cache.gather(torch.tensor(rows, device=self.device), span)

    # -- per-token bookkeeping (host) ----------------------------------------------------------
    def _after_token(self, s: _Stream, token: int) -> bool:
        """Record a sampled token; True when the continuation is over (EOS, delimiter or length)."""
        candidates = s.request.candidates
        if token in self.host.eos_ids:
            reason = "eos"
        else:
            s.generated.append(token)
            reason = ""
            if candidates is not None and self._ends_with_delimiter(s.generated, candidates.delimiter):
                reason = "delimiter"
            elif s.request.stop and self._hits_stop(s.generated, s.request.stop):
                reason = "stop"
            elif len(s.generated) >= self.sampling.max_new_tokens:
                reason = "length"
        if not reason:
            return False
        s.finish_reason = reason
        if candidates is not None:
            self._start_forcing(s, candidates)
        return True

    def _ends_with_delimiter(self, generated: list[int], delimiter: str) -> bool:
        """Token-level first: only a token that can end the delimiter's text costs a decode."""
        if not self.host.may_end(delimiter, generated[-1], inside=False):
            return False
        return self.host.decode(generated[-(len(delimiter) + 2):]).endswith(delimiter)

    def _hits_stop(self, generated: list[int], stops: tuple[str, ...]) -> bool:
        """A stop string ends in the last token (it may sit inside a token, so search a short tail);
        token-level first: only a token that can hold the end of a stop string costs a decode."""
        if not any(self.host.may_end(stop, generated[-1], inside=True) for stop in stops):
            return False
        tail = self.host.decode(generated[-(max(len(stop) for stop in stops) + 2):])
        return any(stop in tail for stop in stops)

    def _start_forcing(self, s: _Stream, candidates: ScoreCandidates) -> None:
        """TRACT's rule (protocol.finish_cot): keep the CoT up to a stop or the cut, force the
        delimiter, then the bridge; the readout context is tokenized as ``request.readout`` says."""
        decode = self.host.decode
        text = decode(s.generated)
        kept_text, forced_text, cut = finish_cot(text, candidates.delimiter, s.request.cut_marker, s.request.stop)
        s.cut = cut
        if s.request.readout == "reference":  # the reference's second pass: prompt + stripped CoT as one text
            cot = s.request.prompt + readout_text(kept_text, forced_text, "reference")
            s.context_ids = self.host.encode(cot) + list(candidates.bridge_ids)
        else:
            kept = kept_prefix_length(decode, s.generated, kept_text) if cut else len(s.generated)
            if cut:  # the cut may fall inside a token: force the text between the boundary and the cut
                forced_text = kept_text[len(decode(s.generated[:kept])):] + forced_text
            forced_ids = self.host.encode(forced_text) if forced_text else []
            s.context_ids = s.prompt_ids + s.generated[:kept] + forced_ids + list(candidates.bridge_ids)
        s.forced_text = forced_text
        cached = s.prompt_ids + s.generated[: s.fed]
        # reuse what the cache holds up to the first difference, but always feed at least the last id
        s.reuse = min(common_prefix_length(s.context_ids, cached), len(s.context_ids) - 1)
        s.forcing = True

    def _complete(self, s: _Stream, candidate_logprobs: dict[int, float] | None = None) -> None:
        ids = s.context_ids[s.prompt_len:] if s.forcing else list(s.generated)
        decode = self.host.decode
        # decode with the prompt so tokenizers that drop a leading space keep it
        text = decode(s.context_ids if s.forcing else s.prompt_ids + ids)[len(decode(s.prompt_ids)):]
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

    def completions(self) -> list[list[Completion]]:
        """Per request, its completions in the order of its CoTs (after :meth:`run`)."""
        return [[s.completion for s in group] for group in self.by_request]


def run_judge_loop(host: EngineHost, requests: list[GenerationRequest], sampling: SeededSampling,
                   on_done: OnDone | None = None, batch_size: int | str | None = None, *,
                   shrink_idle_slots: bool = True) -> list[list[Completion]]:
    """Every request's ``n`` continuations, ``batch_size`` decoding at once (all when None; "auto": as
    many as fit in GPU memory), a finished one's slot taken at once by the next waiting one.

    ``on_done(index, completions)`` fires as soon as all CoTs of request ``index`` are done.
    ``shrink_idle_slots=False`` keeps finished slots in every step until the batch ends, as static
    batching does (perf/judge_loop.py compares the two); it changes the time, never a token.
    """
    if not requests:  # nothing to decode: no buffers sized for max_new_tokens
        return []
    with host.inference():
        loop = JudgeLoop(host, requests, sampling, on_done, batch_size, shrink_idle_slots)
        loop.run()
    return loop.completions()
