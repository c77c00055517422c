"""The one small interface every backend implements."""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, ClassVar

from ..candidates import ScoreCandidates
from ..judge_config import SamplingConfig
from .declaration import BackendDeclaration


@dataclass
class GenerationRequest:
    """Sample ``n`` continuations of ``prompt`` (the exact model input text).

    Every continuation stops at the first of ``stop`` (the text stays in the completion; TRACT:
    ``[RESULT]``, `` [RESULT]``), at end of sequence or at the token budget. With ``candidates``
    set (RAIL judges) it also stops at the delimiter, and the backend then finishes the CoT by
    :func:`tract_eval.protocol.finish_cot` (end before the first stop string, always cut at the
    first ``cut_marker``, strip, append `` " " + delimiter``) and reads the score distribution right
    after ``kept CoT + delimiter + bridge`` from the same computation (text after the cut is
    masked, not recomputed).
    """

    key: str  # seeds the per-continuation random streams, so batching never changes results
    prompt: str
    n: int = 1
    # continuation i uses random stream ``first_index + i``: asking for CoTs 8..15 after 0..7 adds new ones
    first_index: int = 0
    candidates: ScoreCandidates | None = None
    cut_marker: str | None = None
    stop: tuple[str, ...] = ()
    readout: str = "reference"  # how the finished CoT is tokenized for the readout (protocol.READOUTS)


@dataclass
class Completion:
    text: str  # generated text; for readouts it ends with delimiter + bridge
    finish_reason: str  # "delimiter" | "stop" (a stop string) | "eos" | "length" | "forced"
    generated_tokens: int
    forced_text: str = ""  # appended by us, not written by the model
    cut: bool = False  # the sampled text was shortened (stop string, cut marker, trailing space) before the delimiter
    # raw full-vocabulary log-probabilities of each candidate (by score), read after the text
    candidate_logprobs: dict[int, float] | None = None
    # candidates a top-k readout did not return (OpenAI chat): absent from candidate_logprobs,
    # so their probability is unknown and the others are renormalised without them
    missing_candidates: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)  # every id after the prompt, forced ones included
    score_text: str | None = None  # decode readouts: the token sampled as the score (judges set it)
    # the server's answer could not be read even after retries: what it sent (an excerpt); no score
    error: str | None = None


@dataclass
class ScoreRequest:
    """Read the score distribution after ``prompt + continuation + delimiter + bridge`` (no sampling).

    The continuation is finished by TRACT's rule (:func:`tract_eval.protocol.finish_cot`). With
    candidates whose delimiter is empty (:func:`tract_eval.candidates.derive_first_token_candidates`,
    the score-only protocol) and an empty continuation, the score is read at the first assistant
    token: right after ``prompt + bridge``.
    """

    prompt: str
    continuation: str  # a supplied CoT (may be empty); TRACT's cut/append rule applies
    candidates: ScoreCandidates
    cut_marker: str | None = None
    stop: tuple[str, ...] = ()
    readout: str = "reference"  # how the finished CoT is tokenized for the readout (protocol.READOUTS)


# Called once per request as soon as all its completions are done: (request index, completions).
# Runners persist the sample right there, so a killed run loses only what is in flight.
OnDone = Callable[[int, list["Completion"]], None]


class Backend(ABC):
    name: str = "backend"
    # its options, whether it loads weights, its checks (backends.declaration); None: every option scores
    declaration: ClassVar[BackendDeclaration | None] = None

    @abstractmethod
    def render_chat(self, messages: list[dict], response_prefix: str = "") -> str:
        """The exact model input text for a chat, with the assistant turn opened."""

    @abstractmethod
    def tokenizer(self):
        """A Hugging Face tokenizer (for candidate derivation and token counts)."""

    @abstractmethod
    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig, seed: int,
                 on_done: OnDone | None = None, batch_size: int | str | None = None) -> list[list[Completion]]:
        """One list of ``request.n`` completions per request, in order; ``on_done`` as each finishes.

        ``requests`` is the whole queue; ``batch_size`` is how many continuations may decode at once
        (None: as the backend sees fit; "auto": as many as fit in memory). Backends whose engine or server schedules requests itself
        (vLLM, OpenAI-compatible) leave the scheduling to it.
        """

    @abstractmethod
    def score(self, requests: list[ScoreRequest]) -> list[Completion]:
        """Score readout after supplied continuations, one per request."""

    def candidate_logprobs(self, contexts: list[str], candidates: ScoreCandidates) -> list[dict[int, float]]:
        """Raw log-probabilities of each score candidate right after each context text (no TRACT
        rule applied: the context is read as given)."""
        raise NotImplementedError(f"the {self.name} backend cannot read candidate log-probabilities")

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[tuple[float, int, bool]]:
        """lm-eval's ``loglikelihood``: for each ``(context, continuation)``, the summed log-probability
        of the continuation's tokens after the context's, their count, and whether greedy decoding
        would have produced them. Perplexity is ``exp(-sum / count)``."""
        raise NotImplementedError(f"the {self.name} backend cannot score log-likelihoods")

    def encode(self, text: str) -> list[int]:
        """Token ids of a text that already carries its special tokens (chat template applied)."""
        return list(self.tokenizer()(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer().decode(ids, skip_special_tokens=False)

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def describe(self) -> dict:
        return {"backend": self.name}

    def context_length(self) -> int | None:
        """Tokens the model attends to (prompt + generation), or None when unknown (remote servers).

        The runner checks prompt + generation budget against it before judging (too-long policy)."""
        config = getattr(getattr(self, "model", None), "config", None)
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        limit = getattr(self.tokenizer(), "model_max_length", None)  # tokenizers say 1e30 when they do not know
        return limit if isinstance(limit, int) and 0 < limit < 10 ** 8 else None


def loglikelihood_ids(encode: Callable[[str], list[int]], context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The ids every backend scores for ``loglikelihood``: context and continuation encoded apart (as
    score readouts do), so all backends score the same tokens."""
    context_ids, ids = encode(context), encode(continuation)
    if not context_ids or not ids:
        raise ValueError("loglikelihood needs a non-empty context and continuation")
    return context_ids, ids


def stream_seed(seed: int, key: str, index: int) -> int:
    """The seed of continuation ``index`` of the request ``key``: batching and order never change it."""
    digest = hashlib.sha256(f"{seed}\0{key}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def request_seed(seed: int, key: str) -> int:
    """Seed of continuation 0 of a request on servers (vLLM, OpenAI-compatible): continuation ``i``
    uses ``request_seed + i``, which is how vLLM seeds the ``n`` samples of one seeded request."""
    return stream_seed(seed, key, 0) % (1 << 31)


def render_chat_with_tokenizer(tokenizer, messages: list[dict], response_prefix: str = "") -> str:
    """The chat template applied with the assistant turn opened, plus an optional response prefix.

    A chat that ends with an assistant turn is continued instead, as the reference code's
    ``apply_chat_template(add_generation_prompt=False, continue_final_message=True)`` did under its
    pinned transformers 4.47: rendered closed, then cut after the last occurrence of that turn's
    content, so an empty content keeps the closed turn (newer transformers open it instead).
    Inference and training both build model inputs here, so they see the same text.
    Models without a chat template get the messages joined by blank lines.
    """
    if not getattr(tokenizer, "chat_template", None):
        return "\n\n".join(m["content"] for m in messages) + "\n\n" + response_prefix
    if messages and messages[-1]["role"] == "assistant":
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        final = messages[-1]["content"]
        if final not in text:  # templates that strip the content (Llama 3), as transformers 4.47 retried
            final = final.strip()
        return text[: text.rindex(final) + len(final)] + response_prefix
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + response_prefix
