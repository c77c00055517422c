"""A tract-eval judge as a TRL reward function (``GRPOTrainer(reward_funcs=[TractReward(...)])``).

    from tract_eval.integrations.trl import TractReward
    reward = TractReward(judge="tract", model="path/to/judge", rubric="Is the answer helpful?")
    trainer = GRPOTrainer(model=policy, reward_funcs=[reward], train_dataset=dataset, ...)

TRL calls a reward function with ``prompts``, ``completions``, ``completion_ids`` and every other
dataset column as keyword arguments (one value per completion), and takes one float per completion,
``None`` meaning "no reward here" (TRL turns it into NaN and leaves it out of the means). A ``rubric``
column (else ``rubric=``) gives each row's rubric, a ``reference`` column its reference answer.

In process, the judge runs through ``tract_eval.grade_many`` (the model loads once per process);
with ``url=`` it asks a ``tract-eval serve`` instead (``POST /v1/grade``), whose judge and model the
server's command line chose. Either way a completion's reward is the judge's score, and equals
``grade_many`` on the same rows. Completions or prompts that are empty get ``None`` without being
judged; the per-row statuses go to TRL's completions table (``log_extra``) as ``tract_status``.
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any, Sequence

from ..errors import ConfigError

EMPTY = "empty"


def message_text(value: Any, role: str | None = None) -> str:
    """The text of a TRL prompt or completion: a string, or a conversation (the last ``role`` turn's
    content; a content made of parts keeps its text parts)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        turns = [m for m in value if isinstance(m, dict) and (role is None or m.get("role") == role)] or \
                [m for m in value if isinstance(m, dict)]
        if turns:
            content = turns[-1].get("content", "")
            if isinstance(content, list):
                return "".join(part.get("text", "") for part in content if isinstance(part, dict))
            return str(content)
    raise ConfigError(f"TractReward: cannot read text from {type(value).__name__} {str(value)[:80]!r}")


class TractReward:
    """A reward function for TRL trainers; see the module docstring."""

    def __init__(self, judge: str | None = None, model: str | None = None, rubric: str | None = None, *,
                 url: str | None = None, api_key_env: str | None = None, scale: str | Sequence[int] | None = None,
                 rubric_column: str = "rubric", reference_column: str = "reference", timeout: float = 600.0,
                 name: str = "tract_reward", **overrides):
        if url is not None and (judge is not None or model is not None or scale is not None or overrides):
            raise ConfigError("TractReward(url=...): the server's command line chooses its judge, model, scale and "
                              "settings; leave judge, model, scale and judge settings out")
        if api_key_env is not None and url is None:
            raise ConfigError("TractReward: api_key_env is for a server (url=...)")
        if api_key_env is not None and not os.environ.get(api_key_env):
            raise ConfigError(f"TractReward: environment variable {api_key_env} is not set")
        self.judge, self.model, self.rubric, self.scale = judge or "tract", model, rubric, scale
        self.url = url.rstrip("/") if url else None
        self.api_key_env, self.timeout = api_key_env, timeout
        self.rubric_column, self.reference_column = rubric_column, reference_column
        self.overrides = overrides
        self.__name__ = name  # TRL logs the rewards under the function's name: rewards/<name>/mean

    def __call__(self, prompts: list, completions: list, completion_ids: list | None = None,
                 **kwargs) -> list[float | None]:
        rows = self._rows(prompts, completions, kwargs)
        judged = [row for row in rows if row is not None]
        grades = iter(self._grade(judged) if judged else [])
        rewards, statuses = [], []
        for row in rows:
            score, status = next(grades) if row is not None else (None, EMPTY)
            rewards.append(score)
            statuses.append(status)
        log_extra = kwargs.get("log_extra")
        if callable(log_extra):
            log_extra("tract_status", statuses)
        return rewards

    def _rows(self, prompts: list, completions: list, columns: dict) -> list[dict | None]:
        n = len(completions)
        rubrics = columns.get(self.rubric_column)
        references = columns.get(self.reference_column)
        if rubrics is None and self.rubric is None:
            raise ConfigError(f"TractReward: no rubric: give rubric=... or a {self.rubric_column!r} dataset column")
        rows: list[dict | None] = []
        for i in range(n):
            instruction = message_text(prompts[i], "user")
            response = message_text(completions[i], "assistant")
            rubric = rubrics[i] if rubrics is not None and rubrics[i] else self.rubric
            if not instruction.strip() or not response.strip():
                rows.append(None)
                continue
            reference = references[i] if references is not None else None
            rows.append({"instruction": instruction, "response": response, "rubric": rubric,
                         "reference": reference if reference else None})
        return rows

    def _grade(self, rows: list[dict]) -> list[tuple[float | None, str]]:
        if self.url is None:
            from ..api import grade_many

            grades = grade_many(rows, judge=self.judge, model=self.model, scale=self.scale, **self.overrides)
            return [(g.score, g.status) for g in grades]
        return [(r["score"], r["status"]) for r in self._post({"items": rows})["results"]]

    def _post(self, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        request = urllib.request.Request(f"{self.url}/v1/grade", data=json.dumps(body).encode(), headers=headers,
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:  # the server's one-line error, not a bare status
            detail = exc.read().decode(errors="replace")[:500]
            raise RuntimeError(f"TractReward: {self.url}/v1/grade answered {exc.code}: {detail}") from None


__all__ = ["TractReward", "message_text"]
