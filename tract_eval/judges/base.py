"""The absolute-grading judge: model, runs and prediction rows; the protocol is a variant type (variants.py)."""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Callable

from ..backends import Backend, Completion, ScoreRequest, create_backend
from ..backends.base import render_chat_with_tokenizer
from ..benchmarks import Sample
from ..candidates import LOGPROB_TOLERANCE, ScoreCandidates, impossible_logprobs
from ..judge_config import JudgeConfig
from ..prompts import GradingFields, render_prompt
from ..records import Prediction
from .variants import JudgeVariant, variant_type

log = logging.getLogger(__name__)

OnRow = Callable[[Prediction], None]
# Sequences per call for protocols that finish rows only when a call ends, under --batch-size auto.
UNSTREAMED_BATCH = 32


class Judge:
    """Built from a JudgeConfig; the backend is created on first use (one model load per run)."""

    def __init__(self, config: JudgeConfig, backend: Backend | None = None):
        variant_type(config)  # an unknown protocol is refused here, before any model loads
        self.config = config
        self._backend = backend
        self._candidates: ScoreCandidates | None = None
        self._variant: JudgeVariant | None = None
        self.model_note: str | None = None  # set by build_judge when the card's model was replaced by the embedded one

    @classmethod
    def default_config(cls) -> JudgeConfig:
        """Plugin judges override this to ship their own defaults."""
        raise NotImplementedError(f"{cls.__name__} has no default config; give it a judge card")

    @property
    def name(self) -> str:
        return self.config.name

    # -- model ---------------------------------------------------------------------
    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = self._create_backend()
        return self._backend

    def _create_backend(self) -> Backend:
        cfg = self.config  # final: the card's model was settled (and the fallback taken) in build_judge
        return create_backend(cfg.backend, cfg.model, device=cfg.device, dtype=cfg.dtype, **cfg.backend_options)

    @property
    def variant(self) -> JudgeVariant:
        """The judge's protocol (the card's ``protocol``), a type from :mod:`tract_eval.judges.variants`."""
        if self._variant is None or self._variant.config is not self.config:
            self._variant = variant_type(self.config)(self)
        return self._variant

    @property
    def candidates(self) -> ScoreCandidates:
        if self._candidates is None:
            self._candidates = self.variant.candidates(self.backend.tokenizer(), self.backend.render_chat)
        return self._candidates

    # -- inputs --------------------------------------------------------------------
    def grading_prompt(self, fields: GradingFields) -> str:
        """The benchmark row's grading prompt rendered with the card's template (the row's own text)."""
        if fields.prompt_text is not None:
            return fields.prompt_text
        cfg = self.config
        label = cfg.feedback_label if cfg.feedback_label is not None else fields.feedback_label
        fields = dataclasses.replace(fields, scale=tuple(cfg.scale), feedback_label=label)
        return render_prompt(cfg.template, fields, cfg.name)

    def build_input(self, sample: Sample) -> str:
        """The exact model input text of a sample."""
        return self.variant.build_input(sample, self.backend.render_chat, self._chat_template(self.backend.tokenizer()))

    def build_input_with(self, tokenizer, sample: Sample) -> str:
        """The same input built from a tokenizer alone (training: no backend is created)."""
        render = lambda messages: render_chat_with_tokenizer(tokenizer, messages)  # noqa: E731
        return self.variant.build_input(sample, render, self._chat_template(tokenizer))

    def training_input_with(self, tokenizer, prompt: str) -> str:
        """The model input of a training row whose user turn is ``prompt`` (training: no backend)."""
        render = lambda messages: render_chat_with_tokenizer(tokenizer, messages)  # noqa: E731
        return self.variant.training_input(prompt, render, self._chat_template(tokenizer))

    def candidates_with(self, tokenizer) -> ScoreCandidates:
        render = lambda messages: render_chat_with_tokenizer(tokenizer, messages)  # noqa: E731
        return self.variant.candidates(tokenizer, render)

    @staticmethod
    def _chat_template(tokenizer) -> str | None:
        template = getattr(tokenizer, "chat_template", None)
        return template if isinstance(template, str) else None

    # -- judging -------------------------------------------------------------------
    def judge(self, samples: list[Sample], first_cot: int = 0, on_row: OnRow | None = None,
              batch_size: int | str | None = None) -> list[Prediction]:
        """One prediction row per sample (docs/reference/run-files.md), in order; ``batch_size``
        continuations decode at once (default: the config's), the backend refilling finished slots."""
        inputs = [self.build_input(s) for s in samples]
        started = time.perf_counter()
        rows: list[Prediction | None] = [None] * len(samples)

        def finish(index: int, completions: list[Completion], retries: list[int]) -> None:
            rows[index] = self._row(samples[index], inputs[index], completions, retries, time.perf_counter() - started)
            if on_row:
                on_row(rows[index])

        size = batch_size or self.config.batch_size
        if self.variant.streams_rows:
            self.variant.run(samples, inputs, first_cot, finish, size)
        else:
            sequences = size if isinstance(size, int) else UNSTREAMED_BATCH  # "auto": the backend sizes slots
            step = max(1, sequences // (self.config.n_cot if self.variant.writes_cot else 1))
            for start in range(0, len(samples), step):
                self.variant.run(samples[start:start + step], inputs[start:start + step], first_cot,
                                 lambda index, completions, retries, _start=start:
                                 finish(_start + index, completions, retries), size)
        return rows  # type: ignore[return-value]

    def score_given_cots(self, samples: list[Sample], cots: list[list[str]], on_row: OnRow | None = None) -> list[Prediction]:
        """RAIL read after supplied CoTs instead of generated ones (TRACT Table 3 analysis)."""
        if self.config.protocol != "cot-rail":
            raise ValueError(f"judge {self.name}: reading a score after given CoTs needs protocol 'cot-rail'")
        inputs = [self.build_input(s) for s in samples]
        rows = []
        started = time.perf_counter()
        for sample, text, sample_cots in zip(samples, inputs, cots):
            requests = [ScoreRequest(text, cot, self.candidates, self.config.cut_marker, self.config.stop,
                                     self.config.readout)
                        for cot in sample_cots]
            completions = self.backend.score(requests)
            row = self._row(sample, text, completions, [0] * len(completions), time.perf_counter() - started)
            rows.append(row)
            if on_row:
                on_row(row)
        return rows

    # -- rows ------------------------------------------------------------------------
    def _check_readouts(self, sample: Sample, completions: list[Completion], per_cot: list[float | None]) -> None:
        """A readout no distribution can give, or an expected score outside the scale, is a bug in the backend
        (a server's impossible values were turned into counted failures before): stop, never write the row.
        Raw RAIL (no renormalisation) may fall below the scale's low end, never above its high end. Decoded
        scores are not checked: they are what the model wrote, kept as the reference keeps them."""
        for completion in completions:
            problem = completion.candidate_logprobs is not None and impossible_logprobs(completion.candidate_logprobs)
            if problem:
                raise RuntimeError(f"judge {self.name}, sample {sample.id}: the {self.backend.name} backend read "
                                   f"{problem}; this is a bug, the row is not written")
        if not self.variant.reads_distribution:
            return  # a decoded score is the model's text, read as TRACT reads it (a sampled "6" stays 6.0)
        low, high = self.config.scale
        floor = min(0, low) if not self.config.renormalize else low
        for value in per_cot:
            if value is not None and not floor - LOGPROB_TOLERANCE <= value <= high + LOGPROB_TOLERANCE:
                raise RuntimeError(f"judge {self.name}, sample {sample.id}: the {self.backend.name} backend gave the "
                                   f"score {value!r} outside the scale [{low}, {high}]; this is a bug, the row is "
                                   "not written")

    def _row(self, sample: Sample, text: str, completions: list[Completion], retries: list[int],
             seconds: float) -> Prediction:
        cfg = self.config
        per_cot, score_probs, raw_probs, masses = [], [], [], []
        partial = any(c.missing_candidates for c in completions if c.candidate_logprobs is not None)
        for completion in completions:
            if completion.candidate_logprobs is not None:
                raw = {str(s): math.exp(lp) for s, lp in completion.candidate_logprobs.items()}
                mass = sum(raw.values())
                probs = {s: p / mass for s, p in raw.items()} if mass > 0 else raw
                score_probs.append(probs)
                raw_probs.append(raw)
                masses.append(mass)
            if self.variant.reads_distribution:
                if completion.candidate_logprobs is None:  # the server's answer could not be read
                    per_cot.append(None)
                    continue
                # raw probabilities of absent candidates are unknown: policy "renormalize" scores over the
                # candidates present, renormalised; an incomplete distribution is otherwise no score
                weights = probs if cfg.renormalize or completion.missing_candidates else raw
                usable = mass > 0 and (not completion.missing_candidates or cfg.partial_candidates == "renormalize")
                per_cot.append(sum(int(s) * p for s, p in weights.items()) if usable else None)
            else:
                per_cot.append(self.variant.score(completion))
        self._check_readouts(sample, completions, per_cot)
        parsed = [p for p in per_cot if p is not None]
        if cfg.unparsed_runs == "fail-row" and len(parsed) < len(per_cot):
            parsed = []  # the row is scored from all of its runs or not at all (prometheus-eval)
        fallback = float(cfg.fallback_score) if cfg.parse_failure_policy == "fallback" else None
        if partial:  # recorded whatever the policy made of it; never a silent ok
            prediction, status = (sum(parsed) / len(parsed) if parsed else fallback), "partial_candidates"
        elif parsed:
            prediction, status = sum(parsed) / len(parsed), "ok"
        elif fallback is not None:
            prediction, status = fallback, "fallback"
        else:
            prediction, status = None, "parse_failure"
        failure = None
        if status in ("parse_failure", "fallback"):  # retried by the next run when the server was to blame
            failure = "server" if any(c.error for c in completions) else "model"
        return Prediction(
            id=sample.id,
            gold=sample.gold,
            prediction=prediction,
            per_cot=per_cot,
            status=status,
            failure=failure,
            cots=[c.text for c in completions],
            score_probs=score_probs,
            raw_probs=raw_probs,
            candidate_mass=masses,
            missing_candidates=[list(c.missing_candidates) for c in completions],
            finish_reasons=[c.finish_reason for c in completions],
            forced=[c.forced_text for c in completions],
            cut=[c.cut for c in completions],
            retries=list(retries),
            cot_parse_failures=sum(p is None for p in per_cot),
            errors=[c.error for c in completions if c.error],
            input=text,
            prompt_tokens=self.backend.count_tokens(text),
            generated_tokens=sum(c.generated_tokens for c in completions),
            seconds=round(seconds, 3),
            meta=row_meta(sample),
        )


def row_meta(sample: Sample) -> dict:
    """The sample's meta plus the graded response's length in characters, which `diagnose` relates to the
    scores (length bias) and which the stored row cannot tell otherwise (its input is the whole prompt)."""
    return {**sample.meta, "response_chars": len(sample.fields.response)}
