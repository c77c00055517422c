"""The HTTP face of ``tract-eval serve`` (FastAPI): health, grading, and OpenRLHF's remote reward API.

Every request is checked in one order before it reaches the queue: key (401), body size (413), JSON
(400), fields (422, naming them), item count (413), row texts (422, as own-data files are checked).
Errors are ``{"error": "<one line>"}``; 422s add ``"fields"``.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
from dataclasses import dataclass
from typing import Any, Union

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from ..api import Grade, grading_samples
from ..errors import UserError
from .queue import GradingQueue, Settings, ShuttingDown

log = logging.getLogger(__name__)

MAX_N_COT = 64  # per request; more CoTs per row is a different server (start it with --n-cot)
EMPTY = "empty"  # get_reward status of a query whose response (after the prompt) or prompt is empty


@dataclass
class ServeOptions:
    judge: str
    scale: tuple[int, int]
    rubric: str | None = None  # used when a request names none
    max_items: int = 256
    max_body_bytes: int = 16 * 2 ** 20
    api_key: str | None = None  # never logged: compared in constant time, then forgotten
    unscored_reward: float | None = None  # get_reward's reward for a row with no score (default: scale's low end)

    def reward_for_unscored(self) -> float:
        return float(self.scale[0]) if self.unscored_reward is None else self.unscored_reward


# -- request bodies ------------------------------------------------------------------------------------

class GradeItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instruction: StrictStr
    response: StrictStr
    rubric: StrictStr | None = None
    reference: StrictStr | None = None
    id: StrictStr | None = None  # seeds the row's CoTs (default: its 1-based place in the request)


class GradeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[GradeItem]
    n_cot: StrictInt | None = Field(None, ge=1, le=MAX_N_COT)
    seed: StrictInt | None = Field(None, ge=0)


class RewardLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rubric: StrictStr | None = None
    reference: StrictStr | None = None


class RewardBody(BaseModel):
    """OpenRLHF's remote reward request (openrlhf/utils/agent.py ``_fetch_rewards_via_http``): ``query``
    (prompt + response texts), ``prompts``, ``labels``. A label is the reference answer (text), or an
    object with ``rubric`` and/or ``reference``; ``rubric`` here applies to every query."""

    model_config = ConfigDict(extra="allow")  # OpenRLHF may send more; it is ignored
    query: list[StrictStr]
    prompts: list[StrictStr]
    labels: list[Union[StrictStr, RewardLabel, None]] | None = None
    rubric: StrictStr | None = None


# -- errors --------------------------------------------------------------------------------------------

class RequestError(Exception):
    def __init__(self, status: int, message: str, fields: list[dict] | None = None):
        super().__init__(message)
        self.status, self.message, self.fields = status, message, fields

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": self.message}
        if self.fields is not None:
            body["fields"] = self.fields
        return JSONResponse(body, status_code=self.status)


def _field_name(loc: tuple) -> str:
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


def _unprocessable(exc: ValidationError) -> RequestError:
    fields = [{"field": _field_name(tuple(p for p in e["loc"] if p not in ("str", "RewardLabel"))), "problem": e["msg"]}
              for e in exc.errors()]
    first = fields[0]
    more = f" (and {len(fields) - 1} more)" if len(fields) > 1 else ""
    return RequestError(422, f"{first['field']}: {first['problem']}{more}", fields)


# -- the app ------------------------------------------------------------------------------------------

def build_app(options: ServeOptions, queue: GradingQueue) -> FastAPI:
    app = FastAPI(title="tract-eval serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.options, app.state.queue = options, queue

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        return exc.response()

    @app.get("/health")
    async def health():
        judge = queue.judge(Settings())
        return {"ready": queue.ready, "judge": judge.name, "model": judge.backend.describe().get("model"),
                "protocol": judge.config.protocol, "scale": list(options.scale), "n_cot": judge.config.n_cot,
                "seed": judge.config.seed, "max_new_tokens": judge.config.sampling.max_new_tokens,
                "max_items": options.max_items, "rubric_default": options.rubric is not None, **queue.counts()}

    @app.post("/v1/grade")
    async def grade(request: Request):
        body = await _read(request, options, GradeBody)
        _check_count(len(body.items), options)
        rows = []
        for number, item in enumerate(body.items):
            rubric = item.rubric if item.rubric is not None else options.rubric
            if rubric is None:
                raise RequestError(422, f"items[{number}].rubric: required (the server has no --rubric)",
                                   [{"field": f"items[{number}].rubric", "problem": "required"}])
            row = {"instruction": item.instruction, "response": item.response, "rubric": rubric,
                   "reference": item.reference}
            rows.append(row if item.id is None else {**row, "id": item.id})
        samples = _samples(rows, options, "items")
        grades = await _judged(request, queue, samples, Settings(body.n_cot, body.seed))
        return {"results": [{"id": s.id, "score": g.score, "probs": g.probs, "status": g.status, "cots": g.cots}
                            for s, g in zip(samples, grades)]}

    @app.post("/get_reward")
    async def get_reward(request: Request):
        body = await _read(request, options, RewardBody)
        _check_count(len(body.query), options)
        rows, statuses = _reward_rows(body, options)
        samples = _samples([r for r in rows if r is not None], options, "query")
        grades = iter(await _judged(request, queue, samples, Settings()))
        low, high = options.scale
        rewards, scored = [], []
        for place, row in enumerate(rows):
            grade = next(grades) if row is not None else None
            if grade is not None:
                statuses[place] = grade.status
            ok = grade is not None and grade.score is not None
            rewards.append(grade.score if ok else options.reward_for_unscored())
            scored.append(1.0 if ok else 0.0)
        # as openrlhf.cli.serve_rm answers; "scores" in [0, 1] is what OpenRLHF's dynamic filtering reads
        return {"rewards": rewards, "scores": [(r - low) / (high - low) for r in rewards],
                "extra_logs": {"judge_scored": scored}, "statuses": statuses}

    return app


def _split_response(query: str, prompt: str) -> str:
    """The response in an OpenRLHF query, as its reward functions take it (examples/python/
    math_reward_func.py): the text after the prompt when the query holds the prompt, else the query."""
    return query[len(prompt):] if prompt in query else query


def _reward_rows(body: RewardBody, options: ServeOptions) -> tuple[list[dict | None], list[str | None]]:
    """One grading row per query (None for an empty one, which is not judged) and the statuses so far."""
    n = len(body.query)
    for name, values in (("prompts", body.prompts), ("labels", body.labels)):
        if values is not None and len(values) != n:
            raise RequestError(422, f"{name}: {len(values)} entries for {n} queries",
                               [{"field": name, "problem": f"needs one entry per query ({n})"}])
    rows: list[dict | None] = []
    statuses: list[str | None] = []
    for place, (query, prompt) in enumerate(zip(body.query, body.prompts)):
        label = body.labels[place] if body.labels is not None else None
        rubric = label.rubric if isinstance(label, RewardLabel) and label.rubric is not None else body.rubric
        rubric = rubric if rubric is not None else options.rubric
        if rubric is None:
            raise RequestError(422, f"labels[{place}].rubric: required (no rubric in the request and the server "
                                    "has no --rubric)", [{"field": f"labels[{place}].rubric", "problem": "required"}])
        reference = label if isinstance(label, str) else (label.reference if label is not None else None)
        response = _split_response(query, prompt)
        if not response.strip() or not prompt.strip():
            rows.append(None)
            statuses.append(EMPTY)
            continue
        rows.append({"id": str(place + 1), "instruction": prompt, "response": response, "rubric": rubric,
                     "reference": reference})
        statuses.append(None)
    return rows, statuses


def _samples(rows: list[dict], options: ServeOptions, what: str) -> list:
    try:
        return grading_samples(rows, options.scale, source=what)
    except UserError as exc:  # an empty text, a repeated id: the own-data checks, one line
        raise RequestError(422, str(exc), [{"field": what, "problem": str(exc)}]) from None


def _check_count(count: int, options: ServeOptions) -> None:
    if count > options.max_items:
        raise RequestError(413, f"{count} items: this server takes at most {options.max_items} per request "
                                "(--max-items)")


def _authorised(request: Request, options: ServeOptions) -> None:
    if options.api_key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), options.api_key.encode()):
        raise RequestError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')")


async def _read(request: Request, options: ServeOptions, model: type[BaseModel]):
    """The body as ``model``: key, size, JSON and fields checked in that order."""
    _authorised(request, options)
    limit = options.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body of {declared} bytes: this server takes at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body over {limit} bytes: this server takes at most {limit}")
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError(422, f"the body must be a JSON object, not {type(data).__name__}",
                           [{"field": "body", "problem": "not an object"}])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _unprocessable(exc) from None


async def _judged(request: Request, queue: GradingQueue, samples: list, settings: Settings) -> list[Grade]:
    """The samples' grades from the shared queue; the job leaves the queue if the client disconnects."""
    try:
        job = queue.submit(samples, settings)
    except ShuttingDown as exc:
        raise RequestError(503, str(exc)) from None
    result = asyncio.wrap_future(job.future)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server gave up on this request (shutdown timeout)
        queue.cancel(job)
        raise
    finally:
        gone.cancel()
    if not result.done():
        queue.cancel(job)
        raise RequestError(499, "client disconnected")  # nobody reads it; uvicorn drops the connection
    if result.cancelled():
        raise RequestError(499, "client disconnected")
    error = result.exception()
    if isinstance(error, ShuttingDown):
        raise RequestError(503, str(error))
    if error is not None:
        raise RequestError(500, f"grading failed: {type(error).__name__}: {error}")
    return [Grade.from_prediction(row) for row in result.result()]


async def _disconnect(request: Request) -> None:
    """Returns when the client goes away (the body is read, so the next ASGI message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
