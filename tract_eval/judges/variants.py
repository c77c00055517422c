"""How a judge turns a sample into a score: one type per protocol, chosen by the card's ``protocol``.

Each variant builds the model input as its reference does and knows what to sample and where to
read the score; ``Judge`` (base.py) owns the model, the runs and the prediction rows.

| protocol            | input (user turn)                               | sampled                 | score read                            |
|---------------------|-------------------------------------------------|-------------------------|---------------------------------------|
| `cot-rail`          | grading prompt, stripped on the right           | CoT (stops at [RESULT]) | E[y] after CoT + delimiter + bridge   |
| `cot-decode`        | same                                            | CoT, then one token     | the token after CoT + delimiter + " " |
| `score-only-rail`   | score-only instruction + the prompt's body      | nothing                 | E[y] at the first assistant token     |
| `score-only-decode` | same                                            | one token               | the first assistant token             |
| `prometheus`        | ABS_SYSTEM_PROMPT (system turn or prefix) + row | feedback [RESULT] n     | parsed; regenerated if unparsable     |
|                     | (the row `.strip().rstrip('",')`)               | n_cot runs (card: 3)    | the mean of the runs                  |
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, ClassVar

from ..backends import Completion, GenerationRequest, ScoreRequest
from ..candidates import ScoreCandidates, derive_first_token_candidates, derive_score_candidates
from ..errors import ConfigError
from ..judge_config import JudgeConfig, VERDICT_PARSERS
from ..parsing import parse_bare_score, parse_library_verdict, parse_reference_verdict, parse_score
from ..prompts import reference_strip, remove_reference_section, score_only_content
from ..protocol import finish_cot, readout_text

if TYPE_CHECKING:
    from ..benchmarks import Sample
    from .base import Judge

Render = Callable[[list[dict]], str]  # messages -> model input text (chat template applied)
# Called once per sample with its completions and, per completion, how many times it was regenerated.
Finish = Callable[[int, list[Completion], list[int]], None]


class JudgeVariant:
    """The protocol of a judge. Subclasses set the class attributes and implement ``run``."""

    protocol: ClassVar[str]
    # The JudgeConfig settings a judge of this protocol reads that can change its scores: they, and only
    # they, make up the judge part of the run identity (tract_eval.identity). Not among them: the name and
    # description, batch size and device (how fast, not what), the model (the identity's model part).
    # Every protocol reads these; each variant declares them plus its own.
    score_settings: ClassVar[tuple[str, ...]] = (
        "judge_class", "backend", "dtype", "template", "system_prompt", "feedback_label", "protocol", "scale",
        "delimiter", "parse_failure_policy", "fallback_score", "backend_options")
    writes_cot: ClassVar[bool]  # samples a CoT (n_cot continuations per sample)
    reads_distribution: ClassVar[bool]  # the score is an expectation over the candidates (RAIL)
    uses_candidates: ClassVar[bool] = True  # the readout follows the derived delimiter + bridge
    # ``run`` finishes each sample as soon as it is done (the backend's on_done). Variants with a step
    # after sampling (a decode token, regeneration) finish rows only when a call ends, so the judge
    # hands them a batch of samples at a time and a kill loses at most that batch.
    streams_rows: ClassVar[bool] = False

    def __init__(self, judge: "Judge"):
        self.judge = judge
        self.config = judge.config

    @classmethod
    def samples_text(cls) -> bool:
        """Does it sample tokens (a CoT, or a decoded score)? Those that read the sampling settings do."""
        return "sampling" in cls.score_settings

    @classmethod
    def cuts_cot(cls) -> bool:
        """Does it write a CoT finished by TRACT's cut rule (it reads the cut marker)?"""
        return "cut_marker" in cls.score_settings

    # -- inputs --------------------------------------------------------------------------
    def user_content(self, sample: "Sample") -> str:
        return reference_strip(self.judge.grading_prompt(sample.fields))

    def messages_for(self, content: str, chat_template: str | None) -> list[dict]:
        """The chat around a user turn (TRACT: a system turn only with a card ``system_prompt``)."""
        system = [{"role": "system", "content": self.config.system_prompt}] if self.config.system_prompt else []
        return system + [{"role": "user", "content": content}]

    def messages(self, sample: "Sample", chat_template: str | None) -> list[dict]:
        return self.messages_for(self.user_content(sample), chat_template)

    def finish_input(self, text: str) -> str:
        """The templated text as the model reads it (score-only: stripped, the bridge follows)."""
        return text

    def build_input(self, sample: "Sample", render: Render, chat_template: str | None) -> str:
        """The exact model input: the chat template with the assistant turn opened."""
        text = render(self.messages(sample, chat_template))
        if sample.fields.remove_reference:
            text = remove_reference_section(text)
        return self.finish_input(text)

    def training_input(self, prompt: str, render: Render, chat_template: str | None) -> str:
        """The model input of a training row whose user turn is ``prompt`` as prepared (TRACT trains on
        its with_feedback / no_feedback prompts, not on the benchmark layout)."""
        return self.finish_input(render(self.messages_for(reference_strip(prompt), chat_template)))

    def candidates(self, tokenizer, render: Render) -> ScoreCandidates:
        return derive_score_candidates(tokenizer, self.config.delimiter, self.config.scale)

    # -- judging -------------------------------------------------------------------------
    def run(self, samples: list["Sample"], inputs: list[str], first_cot: int, finish: Finish,
            batch_size: int | str | None = None) -> None:
        """Judge the samples, calling ``finish`` per sample; ``batch_size`` sequences decode at once."""
        raise NotImplementedError

    def score(self, completion: Completion) -> float | None:
        """The score of one completion (RAIL variants: the judge computes it from the distribution)."""
        raise NotImplementedError

    def _one_token(self, keys: list[str], prompts: list[str], batch_size=None) -> list[Completion]:
        """One token sampled after each prompt with the judge's sampling settings (TRACT's decode readout)."""
        sampling = dataclasses.replace(self.config.sampling, max_new_tokens=1)
        requests = [GenerationRequest(key=key, prompt=prompt) for key, prompt in zip(keys, prompts)]
        return [group[0] for group in self.judge.backend.generate(requests, sampling, self.config.seed,
                                                                  batch_size=batch_size)]


class CotRail(JudgeVariant):
    """TRACT: sample a CoT, finish it by the reference rule, RAIL right after delimiter + bridge."""

    protocol = "cot-rail"
    score_settings = JudgeVariant.score_settings + (
        "renormalize", "partial_candidates", "sampling", "seed", "n_cot", "unparsed_runs", "readout", "cut_marker", "stop")
    writes_cot = True
    reads_distribution = True
    streams_rows = True

    def run(self, samples, inputs, first_cot, finish, batch_size=None):
        cfg = self.config
        requests = [
            GenerationRequest(key=sample.id, prompt=text, n=cfg.n_cot, first_index=first_cot,
                              candidates=self.judge.candidates, cut_marker=cfg.cut_marker, stop=cfg.stop,
                              readout=cfg.readout)
            for sample, text in zip(samples, inputs)
        ]
        self.judge.backend.generate(requests, cfg.sampling, cfg.seed, batch_size=batch_size,
                                    on_done=lambda index, completions: finish(index, completions, [0] * len(completions)))


class CotDecode(JudgeVariant):
    """CE with CoT as TRACT evaluates it: sample a CoT (stops at [RESULT]), finish it by the same
    rule, then sample one token after ``CoT + " So the overall score is "`` and read it as the score."""

    protocol = "cot-decode"
    score_settings = JudgeVariant.score_settings + (
        "sampling", "seed", "n_cot", "unparsed_runs", "readout", "cut_marker", "stop")
    writes_cot = True
    reads_distribution = False

    def run(self, samples, inputs, first_cot, finish, batch_size=None):
        cfg = self.config
        stops = tuple(cfg.stop) + (cfg.delimiter,)  # text after the delimiter is cut anyway
        requests = [GenerationRequest(key=sample.id, prompt=text, n=cfg.n_cot, first_index=first_cot, stop=stops)
                    for sample, text in zip(samples, inputs)]
        cots = self.judge.backend.generate(requests, cfg.sampling, cfg.seed, batch_size=batch_size)
        bridge = self.judge.candidates.bridge_text
        keys, prompts, finished = [], [], []
        for sample, text, group in zip(samples, inputs, cots):
            for i, completion in enumerate(group):
                kept, forced, cut = finish_cot(completion.text, cfg.delimiter, cfg.cut_marker, cfg.stop)
                cot = readout_text(kept, forced, cfg.readout)
                finished.append((cot + bridge, forced + bridge, cut, completion))
                keys.append(f"{sample.id}\0score\0{first_cot + i}")  # its own random stream
                prompts.append(text + cot + bridge)
        tokens = self._one_token(keys, prompts, batch_size)
        position = 0
        for index, group in enumerate(cots):
            completions = []
            for _ in group:
                context, forced, cut, cot = finished[position]
                token = tokens[position]
                position += 1
                completions.append(Completion(
                    text=context + token.text, finish_reason=cot.finish_reason,
                    generated_tokens=cot.generated_tokens + token.generated_tokens,
                    forced_text=forced, cut=cut, score_text=token.text))
            finish(index, completions, [0] * len(completions))

    def score(self, completion: Completion) -> float | None:
        return parse_bare_score(completion.score_text)


class ScoreOnlyRail(JudgeVariant):
    """Score-only protocol (paper B.3 zero-shot RAIL, B.4 RAFT): the reference's score-only
    instruction + the prompt's body, nothing sampled, the expected score at the first assistant token."""

    protocol = "score-only-rail"
    score_settings = JudgeVariant.score_settings + ("renormalize", "partial_candidates", "score_only_anchor")
    writes_cot = False
    reads_distribution = True

    def user_content(self, sample):
        return score_only_content(reference_strip(self.judge.grading_prompt(sample.fields)))

    def messages_for(self, content, chat_template):
        messages = super().messages_for(content, chat_template)
        if self.config.score_only_anchor == "reference":  # the reference continues an empty assistant turn
            messages.append({"role": "assistant", "content": ""})
        return messages

    def finish_input(self, text):
        # the reference reads after ``text.replace("</s>", "").strip() + " "``: the bridge is the " "
        if self.config.score_only_anchor == "reference":
            return text.replace("</s>", "").strip()
        return text.rstrip()

    def training_input(self, prompt, render, chat_template):
        # training renders [user, assistant: score] as chat fine-tuning does: the score follows the opened turn
        messages = super().messages_for(reference_strip(prompt), chat_template)
        return render(messages).rstrip()

    def candidates(self, tokenizer, render):
        anchor = self.finish_input(render(self.messages_for("###Feedback:", None)))
        return derive_first_token_candidates(tokenizer, anchor, self.config.scale)

    def run(self, samples, inputs, first_cot, finish, batch_size=None):
        requests = [ScoreRequest(text, "", self.judge.candidates) for text in inputs]
        for index, completion in enumerate(self.judge.backend.score(requests)):
            finish(index, [completion], [0])


class ScoreOnlyDecode(ScoreOnlyRail):
    """Score-only protocol with the CE readout (paper B.1 without CoT): one token sampled at the
    first assistant token (after the bridge), read as the score."""

    protocol = "score-only-decode"
    score_settings = JudgeVariant.score_settings + ("score_only_anchor", "sampling", "seed")
    reads_distribution = False

    def run(self, samples, inputs, first_cot, finish, batch_size=None):
        bridge = self.judge.candidates.bridge_text
        tokens = self._one_token([f"{s.id}\0score\0{first_cot}" for s in samples], [text + bridge for text in inputs],
                                 batch_size)
        for index, token in enumerate(tokens):
            finish(index, [dataclasses.replace(token, text=bridge + token.text, forced_text=bridge,
                                               score_text=token.text)], [0])

    def score(self, completion: Completion) -> float | None:
        return parse_bare_score(completion.score_text)


class Prometheus(JudgeVariant):
    """Prometheus-2 absolute grading as prometheus-eval's ``eval/run_evaluate.py`` runs it."""

    protocol = "prometheus"
    score_settings = JudgeVariant.score_settings + (
        "sampling", "seed", "n_cot", "unparsed_runs", "max_retries", "verdict_parser")
    writes_cot = True
    reads_distribution = False
    uses_candidates = False

    def user_content(self, sample):
        # eval/benchmark/data_loader.py:84 cleans each row's instruction before prepare_inputs uses it
        return self.judge.grading_prompt(sample.fields).strip().rstrip('",')

    def messages_for(self, content, chat_template):
        system, user = self.config.system_prompt or "", content
        if chat_template is not None and "system" in chat_template:
            return [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return [{"role": "user", "content": system + user}]  # no separator, as prometheus-eval

    def run(self, samples, inputs, first_cot, finish, batch_size=None):
        cfg = self.config
        backend = self.judge.backend
        requests = [GenerationRequest(key=sample.id, prompt=text, n=cfg.n_cot, first_index=first_cot)
                    for sample, text in zip(samples, inputs)]
        results = backend.generate(requests, cfg.sampling, cfg.seed, batch_size=batch_size)
        retries = [[0] * len(group) for group in results]
        for attempt in range(1, cfg.max_retries + 1):
            failed = [(s, i) for s, group in enumerate(results) for i, c in enumerate(group) if self.score(c) is None]
            if not failed:
                break
            # each regeneration draws from a fresh random stream of its own
            again = [GenerationRequest(key=f"{samples[s].id}\0retry{attempt}", prompt=inputs[s],
                                       first_index=first_cot + i) for s, i in failed]
            for (s, i), group in zip(failed, backend.generate(again, cfg.sampling, cfg.seed, batch_size=batch_size)):
                results[s][i] = group[0]
                retries[s][i] = attempt
        for index, group in enumerate(results):
            finish(index, group, retries[index])

    def score(self, completion: Completion) -> float | None:
        value = VERDICT_PARSE[self.config.verdict_parser](completion.text, tuple(self.config.scale))
        return None if value is None else float(value)


# judge_config.VERDICT_PARSERS: how a prometheus judge reads (and decides to regenerate) a verdict
VERDICT_PARSE = {"reference": parse_reference_verdict, "library": parse_library_verdict, "lenient": parse_score}

# the protocols a card's ``protocol`` may name, in the order errors list them
VARIANTS: dict[str, type[JudgeVariant]] = {cls.protocol: cls for cls in
                                           (CotRail, CotDecode, ScoreOnlyRail, ScoreOnlyDecode, Prometheus)}


def variant_type(config: JudgeConfig) -> type[JudgeVariant]:
    """The variant of the judge's protocol; an unknown protocol is refused naming the known ones."""
    try:
        return VARIANTS[config.protocol]
    except KeyError:
        raise ConfigError(f"judge {config.name!r}: protocol must be one of {', '.join(VARIANTS)}, "
                          f"not {config.protocol!r}") from None
assert tuple(sorted(VERDICT_PARSE)) == tuple(sorted(VERDICT_PARSERS)), "judge_config.VERDICT_PARSERS and the parsers disagree"
