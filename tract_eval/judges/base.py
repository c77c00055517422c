"""The absolute-grading judge: prompt -> (CoT) -> score, by RAIL readout or by parsing the text."""
from __future__ import annotations

import logging
import math
import time
from typing import Callable

from ..backends import Backend, Completion, GenerationRequest, ScoreRequest, create_backend
from ..benchmarks import Sample
from ..candidates import ScoreCandidates, derive_score_candidates
from ..config import JudgeConfig
from ..parsing import parse_score
from ..prompts import GradingFields, render_prompt
from ..records import Prediction

log = logging.getLogger(__name__)

OnRow = Callable[[Prediction], None]


class Judge:
    """Built from a JudgeConfig; the backend is created on first use (one model load per run)."""

    def __init__(self, config: JudgeConfig, backend: Backend | None = None):
        self.config = config
        self._backend = backend
        self._candidates: ScoreCandidates | None = None
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
    def candidates(self) -> ScoreCandidates:
        if self._candidates is None:
            self._candidates = derive_score_candidates(self.backend.tokenizer(), self.config.delimiter, self.config.scale)
        return self._candidates

    # -- inputs --------------------------------------------------------------------
    def grading_prompt(self, fields: GradingFields) -> str:
        cfg = self.config
        label = cfg.feedback_label if cfg.feedback_label is not None else fields.feedback_label
        fields = GradingFields(fields.instruction, fields.response, fields.rubric, fields.reference_answer,
                               tuple(cfg.scale), label)
        return render_prompt(cfg.template, fields)

    def messages(self, sample: Sample) -> list[dict]:
        messages = [{"role": "system", "content": self.config.system_prompt}] if self.config.system_prompt else []
        return messages + [{"role": "user", "content": self.grading_prompt(sample.fields)}]

    @property
    def response_prefix(self) -> str:
        """No-CoT decode judges start the answer with the delimiter, so the model writes only the score."""
        return self.config.delimiter if not self.config.cot and self.config.predictor == "decode" else ""

    def build_input(self, sample: Sample) -> str:
        return self.backend.render_chat(self.messages(sample), self.response_prefix)

    # -- judging -------------------------------------------------------------------
    def judge(self, samples: list[Sample], first_cot: int = 0, on_row: OnRow | None = None,
              batch_size: int | str | None = None) -> list[Prediction]:
        """One prediction row per sample (see README: predictions.jsonl), in order; ``batch_size``
        continuations decode at once (default: the config's), the backend refilling finished slots."""
        cfg = self.config
        inputs = [self.build_input(s) for s in samples]
        started = time.perf_counter()
        rows: list[Prediction | None] = [None] * len(samples)

        def finish(index: int, completions: list[Completion]) -> None:
            rows[index] = self._row(samples[index], inputs[index], completions, time.perf_counter() - started)
            if on_row:
                on_row(rows[index])

        if cfg.predictor == "rail" and not cfg.cot:
            # zero-shot RAIL / RAFT: the score follows the delimiter directly, nothing is sampled
            requests = [ScoreRequest(text, "", self.candidates, cfg.cut_marker) for text in inputs]
            for index, completion in enumerate(self.backend.score(requests)):
                finish(index, [completion])
        else:
            requests = [
                GenerationRequest(
                    key=sample.id, prompt=text, n=cfg.n_cot, first_index=first_cot,
                    candidates=self.candidates if cfg.predictor == "rail" else None,
                    cut_marker=cfg.cut_marker,
                )
                for sample, text in zip(samples, inputs)
            ]
            self.backend.generate(requests, cfg.sampling, cfg.seed, on_done=finish,
                                  batch_size=batch_size or cfg.batch_size)
        return rows  # type: ignore[return-value]

    def score_given_cots(self, samples: list[Sample], cots: list[list[str]], on_row: OnRow | None = None) -> list[Prediction]:
        """RAIL read after supplied CoTs instead of generated ones (TRACT Table 3 analysis)."""
        inputs = [self.build_input(s) for s in samples]
        rows = []
        started = time.perf_counter()
        for sample, text, sample_cots in zip(samples, inputs, cots):
            requests = [ScoreRequest(text, cot, self.candidates, self.config.cut_marker) for cot in sample_cots]
            row = self._row(sample, text, self.backend.score(requests), time.perf_counter() - started)
            rows.append(row)
            if on_row:
                on_row(row)
        return rows

    # -- rows ------------------------------------------------------------------------
    def _row(self, sample: Sample, text: str, completions: list[Completion], seconds: float) -> Prediction:
        cfg = self.config
        per_cot, score_probs, raw_probs, masses = [], [], [], []
        partial = any(c.missing_candidates for c in completions if c.candidate_logprobs is not None)
        for completion in completions:
            if completion.candidate_logprobs is not None:
                raw = {str(s): math.exp(lp) for s, lp in completion.candidate_logprobs.items()}
                mass = sum(raw.values())
                probs = {s: p / mass for s, p in raw.items()} if mass > 0 else raw
                weights = probs if cfg.renormalize else raw
                # an incomplete distribution is no score unless the judge says to renormalise what is there
                usable = mass > 0 and (not completion.missing_candidates or cfg.partial_candidates == "renormalize")
                per_cot.append(sum(int(s) * p for s, p in weights.items()) if usable else None)
                score_probs.append(probs)
                raw_probs.append(raw)
                masses.append(mass)
            else:
                per_cot.append(parse_score(self.response_prefix + completion.text, tuple(cfg.scale)))
        parsed = [p for p in per_cot if p is not None]
        fallback = float(cfg.fallback_score) if cfg.parse_failure_policy == "fallback" else None
        if partial:  # recorded whatever the policy made of it; never a silent ok
            prediction, status = (sum(parsed) / len(parsed) if parsed else fallback), "partial_candidates"
        elif parsed:
            prediction, status = sum(parsed) / len(parsed), "ok"
        elif fallback is not None:
            prediction, status = fallback, "fallback"
        else:
            prediction, status = None, "parse_failure"
        return Prediction(
            id=sample.id,
            gold=sample.gold,
            prediction=prediction,
            per_cot=per_cot,
            status=status,
            cots=[c.text for c in completions],
            score_probs=score_probs,
            raw_probs=raw_probs,
            candidate_mass=masses,
            missing_candidates=[list(c.missing_candidates) for c in completions],
            finish_reasons=[c.finish_reason for c in completions],
            forced=[c.forced_text for c in completions],
            cut=[c.cut for c in completions],
            cot_parse_failures=sum(p is None for p in per_cot),
            errors=[c.error for c in completions if c.error],
            input=text,
            prompt_tokens=self.backend.count_tokens(text),
            generated_tokens=sum(c.generated_tokens for c in completions),
            seconds=round(seconds, 3),
            meta=sample.meta,
        )
