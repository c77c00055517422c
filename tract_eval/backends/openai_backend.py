"""OpenAI-compatible servers: OpenAI, ``vllm serve``, llama.cpp's server and others speaking the same API.

Two score readouts, chosen per judge (``mode``) and reported by ``describe()``:

* ``continue`` (servers that take a raw prompt, e.g. vLLM and llama.cpp): the chat template is
  applied here, each CoT is sampled from ``/completions`` with a stop at the delimiter, then one
  ``max_tokens=1`` request after prompt + CoT + delimiter + bridge reads the candidates'
  log-probabilities: exactly with vLLM's ``logprob_token_ids``, else from the top-k, asking
  llama.cpp again for the whole vocabulary when a candidate is not in the top-k.
* ``single`` (chat-only APIs such as OpenAI's): one chat request per CoT; the score is read from
  ``top_logprobs`` at the score token after the last delimiter, renormalised over the candidates
  present; the candidates missing from the top-k are recorded.

Requests run concurrently (bounded) with the openai client's retries: exponential backoff with
jitter (Retry-After honoured) on 408/409/429/5xx, timeouts and dropped connections. The API key is
read from an environment variable and never stored in ``describe()`` or logged.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import random
from collections import Counter
from dataclasses import dataclass

from ..candidates import ScoreCandidates, impossible_logprobs
from ..judge_config import SamplingConfig
from ..errors import UserError
from ..models import load_tokenizer, resolve_model
from ..redaction import redact_text, register_secret
from .declaration import BackendDeclaration, option
from .base import (Backend, Completion, GenerationRequest, OnDone, ScoreRequest, loglikelihood_ids,
                   render_chat_with_tokenizer, request_seed)
from ..protocol import (exclusive_sequence_logprobs, finish_cot, readout_after_sampled_ids, readout_text,
                        supplied_cot_context)
from ..errors import ConfigError, ServerError

log = logging.getLogger(__name__)

MODES = ("continue", "single")
SERVERS = ("vllm", "llama.cpp", "openai")
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
# /models "owned_by" of the servers we know; anything else is treated as the OpenAI API
_OWNERS = {"vllm": "vllm", "me": "llama.cpp", "llamacpp": "llama.cpp"}


EXCERPT_CHARS = 300  # of a malformed response body, quoted in the row and the log


def check_options(options: dict) -> None:
    """The options a user can get wrong, checked before anything connects (flags named as typed)."""
    from .options import flag_for

    def need(name: str, ok, wanted: str) -> None:
        value = options.get(name)
        if name in options and value is not None and not ok(value):
            raise ConfigError(f"{flag_for(name)} {value!r}: {wanted}")

    def whole(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    need("mode", lambda v: v in MODES, f"the openai backend's mode is one of {', '.join(MODES)}")
    need("server", lambda v: v in SERVERS + ("auto",), f"one of auto, {', '.join(SERVERS)}")
    need("concurrency", lambda v: whole(v) and v >= 1, "need at least 1 request in flight")
    need("max_retries", lambda v: whole(v) and v >= 0, "need 0 or more retries")
    need("timeout", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
         "need a number of seconds > 0")
    need("top_logprobs", lambda v: whole(v) and v >= 1, "need 1 or more")
    name = options.get("api_key_env")
    if name and os.environ.get(name) is None:
        raise ConfigError(f"{flag_for('api_key_env')} {name}: the environment variable {name} is not set "
                          "(export the API key in it)")


def server_error(what: str, exc: Exception, timeout: float) -> ServerError:
    """One line for a request that failed for good: what was asked of which server, and what happened."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        happened = f"no answer within {timeout:g} s (--request-timeout)"
    elif isinstance(exc, openai.APIConnectionError):
        happened = f"cannot connect ({exc.__cause__ or exc})"
    elif isinstance(exc, openai.APIStatusError):
        happened = f"HTTP {exc.status_code}: {exc.message}"
        if exc.status_code in (401, 403):
            happened += f"; set the API key in ${DEFAULT_KEY_ENV}, or name its variable with --api-key-env"
    else:
        happened = f"{type(exc).__name__}: {exc}"
    text = " ".join(redact_text(f"openai backend: {what}: {happened}").split())  # one line
    return ServerError(text if len(text) <= 400 else text[:397] + "...")


class MalformedResponse(RuntimeError):
    """The server answered 200 with a body that is not what the API promises, on every attempt."""


class ServedModelChanged(UserError, RuntimeError):
    """The server answers as another model than the one that answered this run's earlier rows."""


@dataclass
class Usage:
    calls: int = 0  # API calls made (each may take several HTTP attempts)
    http_attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    malformed: int = 0  # 200 answers that could not be read (retried)

    @property
    def retries(self) -> int:
        return max(0, self.http_attempts - self.calls)


@dataclass
class OpenAIOptions:
    """The openai backend's options: where requests go, how many and how patiently, are session-only."""

    base_url: str | None = option(None, session=True, flag="--base-url",
                                  help="server URL, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = option(None, session=True, flag="--api-key-env",
                                     help="environment variable holding the API key (never logged)")
    api_model: str | None = option(None, flag="--api-model",
                                   help="model name sent to the server (default: the one it serves)")
    mode: str = option("continue", flag="--openai-mode",
                       help="score readout 'continue' (raw-prompt servers) or 'single' (chat APIs)")
    tokenizer: str | None = option(None)
    server: str = option("auto")
    concurrency: int = option(8, session=True, flag="--concurrency", help="requests in flight")
    max_retries: int = option(6, session=True, flag="--max-retries",
                              help="retries per request (429/5xx/timeouts/dropped connections)")
    timeout: float = option(600.0, session=True, flag="--request-timeout", help="seconds per request")
    top_logprobs: int = option(20)
    prices: dict | None = option(None, session=True)


class OpenAIBackend(Backend):
    name = "openai"
    declaration = BackendDeclaration(name, OpenAIOptions, loads_weights=False, check=check_options)

    def __init__(self, model: str | None = None, *, base_url: str | None = None, api_key_env: str | None = None,
                 mode: str = "continue", api_model: str | None = None, tokenizer: str | None = None,
                 server: str = "auto", concurrency: int = 8, max_retries: int = 6, timeout: float = 600.0,
                 top_logprobs: int = 20, prices: dict | None = None):
        import openai

        check_options(dict(mode=mode, server=server, concurrency=concurrency, max_retries=max_retries,
                           timeout=timeout, top_logprobs=top_logprobs))
        self.mode = mode
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        self._shown_url = redact_text(self.base_url)  # for messages, logs and describe(): no credentials
        self.api_key_env = api_key_env or DEFAULT_KEY_ENV
        api_key = os.environ.get(self.api_key_env)
        if api_key is None:
            if api_key_env:  # named explicitly: it must be there
                raise ValueError(f"openai backend: environment variable {api_key_env} (api_key_env) is not set")
            log.info("%s is not set: sending no API key (fine for local servers)", DEFAULT_KEY_ENV)
        register_secret(api_key)  # a server or proxy may echo it back: hidden in every excerpt and log
        self._api_key = api_key or "no-key"  # the client insists on a value; local servers ignore it
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = float(timeout)
        self.top_logprobs = top_logprobs
        self.usage = Usage()
        self.answered_by: Counter = Counter()  # the ``model`` field of the answers, counted
        # set by the runner from the folder's earlier sessions: an answer from any other model stops the run
        self.expected_answer_models: set[str] | None = None
        self.notes: list[str] = []
        self._chats: dict[str, tuple[list[dict], str]] = {}  # rendered text -> chat, for single mode

        # A short synchronous look at the server: which one it is and which model it serves.
        sync_client = openai.OpenAI(base_url=self.base_url, api_key=self._api_key, timeout=self.timeout,
                                    max_retries=self.max_retries)
        try:
            served = list(sync_client.models.list())
        except openai.OpenAIError as exc:
            raise server_error(f"cannot list models at {self._shown_url}/models", exc, self.timeout) from exc
        finally:
            sync_client.close()
        self.server = server if server != "auto" else self._detect_server(served)
        self.api_model = api_model or self._pick_model(model, served)
        # vLLM lists each model's context (max_model_len); others say nothing, and the tokenizer's is used
        self._served_context = next((getattr(m, "max_model_len", None) for m in served if m.id == self.api_model), None)
        source = resolve_model(tokenizer or model)
        try:
            self._tokenizer = load_tokenizer(source)
        except OSError as exc:
            raise ValueError(
                f"openai backend: no tokenizer for {source.spec!r} ({exc}); set the backend option "
                "'tokenizer' to a Hugging Face tokenizer (id or folder) of the served model"
            ) from exc
        self.tokenizer_source = source.spec
        self.prices = self._price_for(prices)

    # -- setup helpers --------------------------------------------------------------
    @staticmethod
    def _detect_server(served) -> str:
        owners = {getattr(m, "owned_by", None) for m in served}
        for owner in owners:
            if owner in _OWNERS:
                return _OWNERS[owner]
        return "openai"

    def _pick_model(self, model: str | None, served) -> str:
        ids = [m.id for m in served]
        if model and model in ids:
            return model
        if len(ids) == 1:
            return ids[0]
        if model and not resolve_model(model).is_local:
            return model  # e.g. a hosted model the listing does not show
        raise ValueError(f"openai backend: {self._shown_url} serves {ids}; name one with the option api_model")

    def _price_for(self, prices: dict | None) -> dict | None:
        """``prices``: {model name: {"prompt": USD per 1M tokens, "completion": USD per 1M tokens}}."""
        if not prices:
            return None
        entry = prices.get(self.api_model)
        if entry is None:
            raise ValueError(f"openai backend: prices has no entry for model {self.api_model!r} "
                             f"(entries: {sorted(prices)})")
        missing = {"prompt", "completion"} - set(entry)
        if missing:
            raise ValueError(f"openai backend: prices[{self.api_model!r}] lacks {sorted(missing)} (USD per 1M tokens)")
        return {"prompt": float(entry["prompt"]), "completion": float(entry["completion"])}

    # -- interface -----------------------------------------------------------------
    def tokenizer(self):
        return self._tokenizer

    def render_chat(self, messages: list[dict], response_prefix: str = "") -> str:
        text = render_chat_with_tokenizer(self._tokenizer, messages, response_prefix)
        if self.mode == "single":
            self._chats[text] = (messages, response_prefix)
        return text

    def context_length(self) -> int | None:
        if isinstance(self._served_context, int) and self._served_context > 0:
            return self._served_context
        return super().context_length()

    def describe(self) -> dict:
        usage = self.usage
        cost = None
        if self.prices:
            cost = round((usage.prompt_tokens * self.prices["prompt"]
                          + usage.completion_tokens * self.prices["completion"]) / 1e6, 6)
        return {
            "backend": self.name,
            "base_url": self._shown_url,
            "server": self.server,
            "api_model": self.api_model,
            "tokenizer": self.tokenizer_source,
            "mode": self.mode,
            "api_key_env": self.api_key_env,  # the name only, never the key
            "concurrency": self.concurrency,
            "max_retries": self.max_retries,
            "timeout": self.timeout,
            "top_logprobs": self.top_logprobs,
            "usage": {"calls": usage.calls, "retries": usage.retries, "malformed": usage.malformed,
                      "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens},
            "prices_usd_per_million": self.prices,
            "cost_usd": cost,
            "notes": list(self.notes),
        }

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig, seed: int,
                 on_done: OnDone | None = None, batch_size: int | str | None = None) -> list[list[Completion]]:
        async def one(index: int, request: GenerationRequest) -> list[Completion]:
            async with self._samples:
                try:
                    if self.mode == "single":
                        completions = await self._single(request, sampling, seed)
                    else:
                        completions = await self._continue(request, sampling, seed)
                except MalformedResponse as exc:  # counted as a failed sample, not a crashed run
                    completions = [_failed(exc) for _ in range(request.n)]
            if on_done:
                on_done(index, completions)
            return completions

        return self._run([lambda i=i, r=r: one(i, r) for i, r in enumerate(requests)])

    def score(self, requests: list[ScoreRequest]) -> list[Completion]:
        if self.mode != "continue":
            raise ValueError("openai backend: reading a score after a supplied CoT needs mode 'continue' "
                             "(a chat API cannot continue a given text)")

        async def one(request: ScoreRequest) -> Completion:
            async with self._samples:
                text, forced, cut, context_ids = supplied_cot_context(
                    self._encode, request.prompt, request.continuation, request.candidates, request.cut_marker,
                    request.stop, request.readout)
                # vLLM takes token ids, tokenized as the other backends do; other servers take the text
                context = context_ids if self.server == "vllm" else request.prompt + text
                try:
                    logprobs, missing = await self._candidate_logprobs(context, request.candidates)
                except MalformedResponse as exc:
                    return _failed(exc, text=text, forced_text=forced, cut=cut)
            return Completion(text=text, finish_reason="forced", generated_tokens=0, forced_text=forced, cut=cut,
                              candidate_logprobs=logprobs, missing_candidates=missing)

        return self._run([lambda r=r: one(r) for r in requests])

    def candidate_logprobs(self, contexts: list[str], candidates: ScoreCandidates) -> list[dict[int, float]]:
        self._need_completions("reading candidate log-probabilities after a given text")

        async def one(context: str) -> dict[int, float]:
            async with self._samples:
                # vLLM takes token ids: the context's ids exactly as the other backends encode it
                logprobs, missing = await self._candidate_logprobs(
                    self._encode(context) if self.server == "vllm" else context, candidates)
            if missing:  # no silent renormalisation: the caller asked for every candidate
                raise RuntimeError(f"openai backend: {self._shown_url} returned no log-probability for the "
                                   f"candidates {missing} after {context[-60:]!r} (top-{self.top_logprobs})")
            return logprobs

        return self._run([lambda c=c: one(c) for c in contexts])

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[tuple[float, int, bool]]:
        """The prompt's own log-probabilities (``/completions`` with ``echo`` and ``logprobs``). vLLM gets
        the context's and continuation's ids encoded apart, as the other backends score them; other
        servers get the joined text, and the continuation is the tokens from the context's end on
        (their count is the server's). A server that returns no prompt log-probabilities is refused."""
        self._need_completions("log-likelihoods")

        async def one(context: str, continuation: str) -> tuple[float, int, bool]:
            async with self._samples:
                return await self._prompt_loglikelihood(context, continuation)

        return self._run([lambda c=c, t=t: one(c, t) for c, t in pairs])

    def _need_completions(self, what: str) -> None:
        if self.mode != "continue":
            raise ValueError(f"openai backend: {what} needs mode 'continue' (/completions on a raw prompt); "
                             "a chat API cannot score a given text")

    async def _prompt_loglikelihood(self, context: str, continuation: str) -> tuple[float, int, bool]:
        if self.server == "vllm":
            context_ids, ids = loglikelihood_ids(self._encode, context, continuation)
            prompt: str | list[int] = context_ids + ids
            # max_tokens 0 with echo: vLLM returns the prompt alone, nothing is sampled
            body = {"max_tokens": 0, "extra_body": {**self._raw_prompt_extra(), "return_tokens_as_token_ids": True}}
        else:
            if not context or not continuation:
                raise ValueError("loglikelihood needs a non-empty context and continuation")
            prompt = context + continuation
            body = {"max_tokens": 1}  # llama.cpp reads max_tokens 0 as "up to the context size"
        choice = (await self._call("completions", prompt=prompt, echo=True, logprobs=1, temperature=0.0,
                                   **body)).choices[0]
        logprobs = choice.logprobs
        tokens, values = list(logprobs.tokens or []), list(logprobs.token_logprobs or [])
        tops, offsets = list(logprobs.top_logprobs or []), list(logprobs.text_offset or [])
        refused = (f"openai backend: {self._shown_url} returned no log-probabilities of the prompt's tokens "
                   "(completions with echo=True and logprobs); this server cannot score a given text")
        if isinstance(prompt, list):
            if len(tokens) < len(prompt) or len(values) < len(prompt):
                raise RuntimeError(refused)
            if tokens[:len(prompt)] != [f"token_id:{i}" for i in prompt]:
                raise RuntimeError(f"openai backend: {self._shown_url} echoed other tokens than the prompt ids it was sent")
            positions = list(range(len(context_ids), len(prompt)))
        else:
            if not choice.text.startswith(prompt) or len(offsets) != len(tokens) or len(values) != len(tokens):
                raise RuntimeError(refused)  # echo ignored, or no per-token offsets to find the continuation by
            if len(context) not in offsets:
                raise RuntimeError(f"openai backend: the server's tokens of the joined text cross the boundary between "
                                   f"context and continuation (at character {len(context)}): no token sequence of "
                                   "the continuation alone to score")
            positions = [i for i, offset in enumerate(offsets) if len(context) <= offset < len(prompt)]
        if not positions or any(values[i] is None or i >= len(tops) or not tops[i] for i in positions):
            raise RuntimeError(refused)
        greedy = all(values[i] >= max(tops[i].values()) for i in positions)
        return float(sum(values[i] for i in positions)), len(positions), greedy

    # -- async plumbing --------------------------------------------------------------
    def _run(self, jobs):
        async def main():
            import openai

            self._samples = asyncio.Semaphore(self.concurrency)  # samples in flight
            self._calls = asyncio.Semaphore(self.concurrency)  # HTTP calls in flight
            self._client = openai.AsyncOpenAI(
                base_url=self.base_url, api_key=self._api_key, timeout=self.timeout, max_retries=self.max_retries,
                http_client=openai.DefaultAsyncHttpxClient(event_hooks={"request": [self._count_attempt]}),
            )
            tasks = [asyncio.ensure_future(job()) for job in jobs]
            try:
                return await asyncio.gather(*tasks)
            finally:  # one request failed for good: stop the rest (what finished was already handed over)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await self._client.close()

        return asyncio.run(main())

    async def _count_attempt(self, _request) -> None:
        self.usage.http_attempts += 1

    async def _call(self, endpoint: str, **body):
        """One API call: transport failures are retried by the client; a 200 answer that is not the
        expected shape (not JSON, no choices, no log-probabilities when asked) is retried here with the
        same backoff, then raised as :class:`MalformedResponse` quoting what the server sent."""
        import openai

        resource = self._client.completions if endpoint == "completions" else self._client.chat.completions
        problem, excerpt = "", ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(min(8.0, 0.25 * 2 ** (attempt - 1)) * (0.5 + random.random() / 2))
            async with self._calls:
                self.usage.calls += 1
                try:
                    raw = await resource.with_raw_response.create(model=self.api_model, **body)
                except openai.OpenAIError as exc:
                    raise server_error(f"{endpoint} request to {self._shown_url} failed after {self.max_retries} "
                                       "retries", exc, self.timeout) from exc
            try:
                response = raw.parse()
                problem = _malformed(endpoint, response, body)
            except (ValueError, TypeError, AttributeError) as exc:  # not JSON, or not the API's shape
                problem = f"unreadable body ({type(exc).__name__}: {exc})"
            if not problem:
                self._check_answer_model(getattr(response, "model", None))
                if getattr(response, "usage", None) is not None:
                    self.usage.prompt_tokens += response.usage.prompt_tokens or 0
                    self.usage.completion_tokens += response.usage.completion_tokens or 0
                return response
            self.usage.malformed += 1
            # redacted: some proxies echo the request (its Authorization header) in an error page
            # (whole, then cut: a key cut in half would no longer match)
            body_text = redact_text(raw.text)
            excerpt = body_text[:EXCERPT_CHARS] + ("..." if len(body_text) > EXCERPT_CHARS else "")
            log.warning("openai backend: malformed %s response from %s (attempt %d of %d): %s; body: %r",
                        endpoint, self._shown_url, attempt + 1, self.max_retries + 1, problem, excerpt)
        raise MalformedResponse(f"{endpoint} response from {self._shown_url}: {problem} "
                                f"({self.max_retries + 1} attempts); the server sent: {excerpt!r}")

    def _check_answer_model(self, model) -> None:
        """Count which model answered; refuse one that differs from what answered the folder's rows, before
        its answer becomes a row (the first such answer stops the run)."""
        model = model if isinstance(model, str) and model else "(not said)"
        expected = self.expected_answer_models
        if expected and model not in expected:
            raise ServedModelChanged(
                f"{self._shown_url} now answers as model {model!r}, but this folder's rows were answered by "
                f"{', '.join(map(repr, sorted(expected)))}; use another --out, or point --base-url at that model")
        self.answered_by[model] += 1

    def served_model(self) -> str:
        """The model id requests name (part of the run identity)."""
        return self.api_model

    # -- sampling parameters -----------------------------------------------------------
    def _sampling_body(self, sampling: SamplingConfig) -> dict:
        body = {"max_tokens": sampling.max_new_tokens, "temperature": sampling.temperature, "top_p": sampling.top_p}
        extra: dict = {}
        penalty = sampling.repetition_penalty
        if self.server == "vllm":
            extra = {"repetition_penalty": penalty}
        elif self.server == "llama.cpp":
            # llama.cpp's own defaults (top_k 40, min_p 0.05) would change the paper's sampling
            extra = {"repeat_penalty": penalty, "top_k": 0, "min_p": 0.0}
            if penalty != 1.0:
                self._note("llama.cpp applies repeat_penalty to its last 64 tokens only, not to the whole "
                           "context as transformers and vLLM do")
        elif penalty != 1.0:
            self._note(f"repetition_penalty {penalty} not applied: the OpenAI API has no such parameter")
        if extra:
            body["extra_body"] = extra
        return body

    def _raw_prompt_extra(self) -> dict:
        # the prompt already carries the chat template's special tokens: add no BOS of our own
        return {"add_special_tokens": False} if self.server == "vllm" else {}

    def _note(self, text: str) -> None:
        if text not in self.notes:
            log.warning("openai backend: %s", text)
            self.notes.append(text)

    # -- continue mode -----------------------------------------------------------------
    async def _continue(self, request: GenerationRequest, sampling: SamplingConfig, seed: int) -> list[Completion]:
        base_seed = request_seed(seed, request.key) + request.first_index
        body = self._sampling_body(sampling)
        candidates = request.candidates
        stop = ([candidates.delimiter] if candidates is not None else []) + list(request.stop)
        if stop:
            body["stop"] = stop
        body.setdefault("extra_body", {}).update(self._raw_prompt_extra())
        if self.server == "vllm":
            body["extra_body"]["return_token_ids"] = True
            # one call, n samples: vLLM gives sample i the seed base_seed + i, as the offline engine does
            response = await self._call("completions", prompt=request.prompt, n=request.n, seed=base_seed, **body)
            choices = sorted(response.choices, key=lambda c: c.index)
            samples = [(c, len(c.token_ids or [])) for c in choices]
        else:
            responses = await asyncio.gather(*[
                self._call("completions", prompt=request.prompt, n=1, seed=base_seed + i, **body)
                for i in range(request.n)])
            samples = [(r.choices[0], r.usage.completion_tokens if r.usage else self.count_tokens(r.choices[0].text))
                       for r in responses]
        return list(await asyncio.gather(*[self._finish_continue(request, c, n) for c, n in samples]))

    def _stopped_at_delimiter(self, choice, generated_tokens: int, delimiter: str) -> bool:
        if choice.finish_reason != "stop":
            return False
        stop_reason = getattr(choice, "stop_reason", None)
        if stop_reason is not None or self.server == "vllm":
            return stop_reason == delimiter
        # Servers that do not say why they stopped (llama.cpp): a stop string was hit when tokens
        # were generated beyond the returned text (the stop string's own); at EOS there are none.
        return generated_tokens - self.count_tokens(choice.text) >= 2

    async def _finish_continue(self, request: GenerationRequest, choice, generated_tokens: int) -> Completion:
        text = choice.text
        candidates = request.candidates
        token_ids = list(getattr(choice, "token_ids", None) or [])
        if candidates is None:
            reason = {"stop": "eos", "length": "length"}.get(choice.finish_reason, choice.finish_reason)
            return Completion(text=text, finish_reason=reason, generated_tokens=generated_tokens, token_ids=token_ids)
        at_delimiter = self._stopped_at_delimiter(choice, generated_tokens, candidates.delimiter)
        reason = "delimiter" if at_delimiter else ("length" if choice.finish_reason == "length" else "eos")
        if self.server == "vllm" and getattr(choice, "token_ids", None) is not None:
            # read after the very ids the server sampled, as the offline engine does
            prompt_ids = self._encode(request.prompt)
            full, forced, cut, context_ids = readout_after_sampled_ids(
                self._tokenizer, prompt_ids, token_ids, choice.finish_reason, at_delimiter,
                candidates, request.cut_marker, request.stop, request.readout)
            context: str | list[int] = context_ids
            token_ids = context_ids[len(prompt_ids):]
        else:
            if at_delimiter:
                text += candidates.delimiter
            kept, forced, cut = finish_cot(text, candidates.delimiter, request.cut_marker, request.stop)
            full = readout_text(kept, forced, request.readout) + candidates.bridge_text
            context = request.prompt + full
        logprobs, missing = await self._candidate_logprobs(context, candidates)
        return Completion(text=full, finish_reason=reason, generated_tokens=generated_tokens, forced_text=forced,
                          cut=cut, candidate_logprobs=logprobs, missing_candidates=missing, token_ids=token_ids)

    def _encode(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    async def _candidate_logprobs(self, context: str | list[int],
                                  candidates: ScoreCandidates) -> tuple[dict[int, float], list[int]]:
        """Raw log-probabilities of each candidate after ``context`` (text or token ids, ending with
        delimiter + bridge). Values no distribution can have are the server's fault: a counted failure
        quoting them (MalformedResponse), never a score."""
        logprobs, missing = await self._read_candidate_logprobs(context, candidates)
        self._refuse_impossible(logprobs)
        return logprobs, missing

    def _refuse_impossible(self, logprobs: dict[int, float]) -> None:
        problem = impossible_logprobs(logprobs)
        if problem:
            self.usage.malformed += 1
            raise MalformedResponse(f"score readout from {self._shown_url}: {problem}")

    async def _read_candidate_logprobs(self, context: str | list[int],
                                       candidates: ScoreCandidates) -> tuple[dict[int, float], list[int]]:
        if candidates.single_token:
            found = await self._next_token_logprobs(context, candidates.first_token_ids)
            logprobs = {s: found[seq[0]] for s, seq in zip(candidates.scores, candidates.sequences) if seq[0] in found}
            return logprobs, [s for s in candidates.scores if s not in logprobs]
        # token sequences (e.g. "10"): chain readouts, one per distinct prefix
        prefixes = {seq[:j] for seq in candidates.sequences for j in range(len(seq))}
        readouts = dict(zip(prefixes, await asyncio.gather(*[
            self._next_token_logprobs(context + list(p) if isinstance(context, list) else
                                      context + self._tokenizer.decode(list(p)),
                                      sorted({seq[len(p)] for seq in candidates.sequences if seq[:len(p)] == p}))
            for p in prefixes])))
        totals, missing = {}, []
        for score, seq in zip(candidates.scores, candidates.sequences):
            steps = [readouts[seq[:j]].get(seq[j]) for j in range(len(seq))]
            if any(step is None for step in steps):
                missing.append(score)
            else:
                totals[score] = sum(steps)
        if missing:  # cannot subtract an unknown mass of longer candidates
            return totals, missing
        return exclusive_sequence_logprobs(totals, candidates), []

    async def _next_token_logprobs(self, context: str | list[int], wanted: list[int]) -> dict[int, float]:
        """Full-vocabulary log-probabilities of the ``wanted`` token ids after ``context`` (those the server gives)."""
        body = {"prompt": context, "max_tokens": 1, "temperature": 0.0}
        if self.server == "vllm":
            body.update(logprobs=1, extra_body={**self._raw_prompt_extra(), "logprob_token_ids": list(wanted),
                                                "return_tokens_as_token_ids": True})
            top = (await self._call("completions", **body)).choices[0].logprobs.top_logprobs[0]
            return {int(key.split(":", 1)[1]): value for key, value in top.items() if int(key.split(":", 1)[1]) in wanted}
        strings = {self._tokenizer.decode([i]): i for i in wanted}
        found = await self._top_logprobs_by_string(body, self.top_logprobs, strings)
        if len(found) < len(wanted) and self.server == "llama.cpp":
            # llama.cpp returns any number of alternatives: ask for the whole vocabulary once
            found = await self._top_logprobs_by_string(body, len(self._tokenizer), strings)
        return found

    async def _top_logprobs_by_string(self, body: dict, k: int, strings: dict[str, int]) -> dict[int, float]:
        top = (await self._call("completions", logprobs=k, **body)).choices[0].logprobs.top_logprobs[0] or {}
        return {strings[text]: value for text, value in top.items() if text in strings}

    # -- single mode -----------------------------------------------------------------
    async def _single(self, request: GenerationRequest, sampling: SamplingConfig, seed: int) -> list[Completion]:
        try:
            messages, prefix = self._chats[request.prompt]
        except KeyError:
            raise ValueError("openai backend, mode 'single': the prompt was not built by this backend's "
                             "render_chat, so there is no chat to send") from None
        messages = list(messages)
        body = self._sampling_body(sampling)
        if prefix:  # servers that can continue an assistant turn (vLLM); OpenAI rejects it loudly
            messages.append({"role": "assistant", "content": prefix})
            body.setdefault("extra_body", {}).update(continue_final_message=True, add_generation_prompt=False)
        if request.candidates is not None:
            body.update(logprobs=True, top_logprobs=self.top_logprobs)
        base_seed = request_seed(seed, request.key) + request.first_index
        responses = await asyncio.gather(*[
            self._call("chat", messages=messages, n=1, seed=base_seed + i, **body) for i in range(request.n)])
        return [self._read_single(request, r) for r in responses]

    def _read_single(self, request: GenerationRequest, response) -> Completion:
        choice = response.choices[0]
        text = choice.message.content or ""
        generated = response.usage.completion_tokens if response.usage else self.count_tokens(text)
        reason = {"stop": "eos", "length": "length"}.get(choice.finish_reason, choice.finish_reason)
        candidates = request.candidates
        if candidates is None:
            return Completion(text=text, finish_reason=reason, generated_tokens=generated)
        tokens = choice.logprobs.content if choice.logprobs and choice.logprobs.content else []
        found = _score_token_after_delimiter(tokens, candidates.delimiter)
        if found is None:  # no delimiter followed by a token: nothing to read
            return Completion(text=text, finish_reason=reason, generated_tokens=generated, candidate_logprobs=None)
        offset, token = found
        probs: dict[int, float] = {}
        raw_logprobs: dict[str, float] = {}  # as the server sent them, for the check and its message
        for alternative in token.top_logprobs or []:
            label = alternative.token.strip()
            for score in candidates.scores:
                if label == str(score):  # " 4" and "4" both spell 4: add them up
                    raw_logprobs[repr(alternative.token)] = alternative.logprob
                    probs[score] = probs.get(score, 0.0) + math.exp(alternative.logprob)
        self._refuse_impossible(raw_logprobs)
        logprobs = {s: math.log(p) for s, p in probs.items()}
        return Completion(text=text[:offset], finish_reason="delimiter", generated_tokens=generated,
                          candidate_logprobs=logprobs, missing_candidates=[s for s in candidates.scores if s not in probs])


def _failed(exc: MalformedResponse, text: str = "", forced_text: str = "", cut: bool = False) -> Completion:
    """A completion that carries no score, only why (the row becomes a counted failure)."""
    return Completion(text=text, finish_reason="error", generated_tokens=0, forced_text=forced_text, cut=cut,
                      error=redact_text(str(exc)))


def _malformed(endpoint: str, response, body: dict) -> str:
    """What is wrong with a parsed 200 response, or "" when it has the shape the readers below use."""
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list) or not choices:
        return "no choices"
    if len(choices) < body.get("n", 1):
        return f"{len(choices)} choices for n={body['n']}"
    for choice in choices:
        if endpoint == "completions":
            if not isinstance(getattr(choice, "text", None), str):
                return "a choice without text"
            if body.get("logprobs") is not None:
                logprobs = getattr(choice, "logprobs", None)
                top = getattr(logprobs, "top_logprobs", None)
                # with echo the prompt's first token has none (nothing precedes it): look at the last
                step = (top[-1] if body.get("echo") else top[0]) if isinstance(top, list) and top else None
                if not isinstance(step, dict):
                    return "logprobs asked for but null or empty"
                if not all(isinstance(v, (int, float)) and math.isfinite(v) or v == -math.inf
                           for v in step.values()):
                    return "non-numeric log-probabilities"
        else:
            message = getattr(choice, "message", None)
            if message is None or not isinstance(getattr(message, "content", None), (str, type(None))):
                return "a choice without a message"
            if body.get("logprobs"):
                content = getattr(getattr(choice, "logprobs", None), "content", None)
                if not isinstance(content, list):
                    return "logprobs asked for but null"
    return ""


def _score_token_after_delimiter(tokens, delimiter: str):
    """``(text offset, token)`` of the first non-blank token after the last delimiter, or None."""
    text = "".join(t.token for t in tokens)
    end = text.rfind(delimiter)
    if end < 0:
        return None
    end += len(delimiter)
    offset = 0
    for token in tokens:
        start, offset = offset, offset + len(token.token)
        if offset > end and token.token[max(0, end - start):].strip():
            return start, token
    return None
