"""A deterministic OpenAI-compatible server on 127.0.0.1 that injects faults on request.

It speaks just enough of ``/v1/models`` and ``/v1/completions`` for the OpenAI backend's
``continue`` mode: a CoT request returns ``"cot words"`` stopped at the delimiter, a
``max_tokens=1`` log-probability request returns top log-probabilities over the score strings
``"1".."5"`` that depend only on the prompt (so a faulty run must end with the very numbers of a
clean one). Faults, chosen per POST by ``faults`` (a list consumed in order, or a callable
``(post number, body) -> fault or None``):

* an HTTP status (429, 500, 503): an error body, with ``retry-after-ms`` so retries are quick
* ``"drop"``: the connection is closed without an answer
* ``"stall"``: nothing is sent for ``stall_seconds`` (bounded), then the connection closes
* ``"badjson"``, ``"html"``, ``"nochoices"``, ``"nulllogprobs"``: a 200 the API does not allow
* ``"partial"``: a log-probability answer that omits two score candidates
* ``"echoauth"``: a 200 error page (not JSON) that echoes the request's ``Authorization`` header, as
  some proxies do
* ``"impossible"``: log-probabilities above 0 (``impossible_logprob``, default +2.0) for every score
  candidate, in completions and chat answers alike

Listed faults that only a score readout can have (``LOGPROB_ONLY``) wait for the next readout.

Every injected fault is counted in ``injected``.
"""
from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections import Counter

MALFORMED = ("badjson", "html", "nochoices", "nulllogprobs")
TRANSIENT = (429, 500, 503, "drop", "stall")
LOGPROB_ONLY = ("nulllogprobs", "partial")  # faults of score readouts (max_tokens=1 with logprobs)
MODEL_ID = "fake-judge"
DELIMITER = "So the overall score is"  # the TRACT judges' (chat answers put the score after it)


def score_logprobs(prompt: str) -> dict[str, float]:
    """The server's 'model': prefers the score 1 + len(prompt) mod 5."""
    target = 1 + len(prompt) % 5
    return {str(s): -abs(s - target) - 1.0 for s in range(1, 6)}


TOP_LOGPROB = -0.5  # the 'model's most likely token at every prompt position has this log-probability
TOP_TOKEN = "\x00"  # and is this token (never in a test's text), unless the prompt's own token is as likely


def prompt_token_logprob(token: str) -> float:
    """The 'model's log-probability of a prompt token (echo): a function of its text alone; the
    tokens whose code points sum to a multiple of 7 are the most likely ones (greedy)."""
    return TOP_LOGPROB - (sum(map(ord, token)) % 7) / 4


def echo_tokens(prompt, tokens: str) -> list[str]:
    """How the fake server tokenizes an echoed prompt: token ids as vLLM's ``token_id:N`` strings;
    text in single characters (``tokens="chars"``) or character pairs (``"pairs"``)."""
    if isinstance(prompt, list):
        return [f"token_id:{i}" for i in prompt]
    size = 2 if tokens == "pairs" else 1
    return [prompt[i:i + size] for i in range(0, len(prompt), size)]


class FaultyOpenAIServer:
    def __init__(self, faults=None, stall_seconds: float = 1.5, max_model_len: int | None = None,
                 owned_by: str = "tract-eval-tests", echo: str = "chars", model_id: str = MODEL_ID,
                 answer_model: str | None = None, impossible_logprob: float = 2.0):
        self.model_id = model_id  # the id /models lists
        self.answer_model = answer_model or model_id  # the ``model`` field answers carry
        self.impossible_logprob = impossible_logprob
        self.owned_by = owned_by  # "vllm" makes the backend take it for vLLM (token-id prompts)
        self.echo = echo  # prompt tokens of an echo request: "chars", "pairs", or "ignore" (no prompt logprobs)
        self.faults = faults if callable(faults) else list(faults or [])
        self.stall_seconds = stall_seconds
        self.max_model_len = max_model_len  # listed in /models as vLLM does, when given
        self.posts = 0
        self.injected: Counter = Counter()
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, payload: bytes, extra_headers: dict | None = None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in (extra_headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    model = {"id": server.model_id, "object": "model", "created": 0, "owned_by": server.owned_by}
                    if server.max_model_len:
                        model["max_model_len"] = server.max_model_len
                    data = {"object": "list", "data": [model]}
                    self._send(200, json.dumps(data).encode())
                else:
                    self._send(404, b'{"error": {"message": "not found"}}')

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server._lock:
                    server.posts += 1
                    number = server.posts
                    logprob_request = body.get("logprobs") is not None and body.get("max_tokens") == 1
                    if callable(server.faults):
                        fault = server.faults(number, body)
                    else:  # the first listed fault that can happen to this request
                        usable = [i for i, f in enumerate(server.faults)
                                  if logprob_request or f not in LOGPROB_ONLY]
                        fault = server.faults.pop(usable[0]) if usable else None
                    if fault is not None:
                        server.injected[fault] += 1
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault == "stall":
                    time.sleep(server.stall_seconds)
                    self.close_connection = True
                    return
                if isinstance(fault, int):
                    payload = json.dumps({"error": {"message": f"injected {fault}", "code": fault}}).encode()
                    self._send(fault, payload, {"retry-after-ms": "10"})
                    return
                if fault == "badjson":
                    self._send(200, b'{"id": "cmpl-1", "choices": [{"text": "cot')
                    return
                if fault == "echoauth":
                    echoed = f"<html>proxy error; your request: Authorization: {self.headers.get('Authorization')}</html>"
                    self._send(200, echoed.encode())
                    return
                if fault == "html":
                    self._send(200, b"<html><body>502 Bad Gateway</body></html>")
                    return
                if "messages" in body:
                    self._send(200, json.dumps(server._chat(number, body, fault)).encode())
                    return
                choice = {"index": 0, "finish_reason": "stop", "logprobs": None}
                if body.get("echo"):
                    choice.update(server._echo(body))
                elif logprob_request and body.get("logprob_token_ids"):  # vLLM's exact readout, ids as keys
                    target = 1 + len(str(body["prompt"])) % 5
                    top = {f"token_id:{i}": -abs(i - target) - 1.0 for i in body["logprob_token_ids"]}
                    choice.update(text="", finish_reason="length",
                                  logprobs={"tokens": [], "token_logprobs": [], "top_logprobs": [top],
                                            "text_offset": [0]})
                elif logprob_request:
                    top = score_logprobs(body["prompt"])
                    if fault == "impossible":
                        top = {k: server.impossible_logprob for k in top}
                    if fault == "partial":
                        top = {k: v for k, v in top.items() if k not in ("1", "5")}
                    choice.update(text=max(top, key=top.get), finish_reason="length",
                                  logprobs=None if fault == "nulllogprobs" else
                                  {"tokens": [max(top, key=top.get)], "token_logprobs": [max(top.values())],
                                   "top_logprobs": [top], "text_offset": [0]})
                else:
                    stop = body.get("stop") or []
                    choice.update(text="cot words", stop_reason=stop[0] if stop else None)
                data = {"id": f"cmpl-{number}", "object": "text_completion", "created": 0, "model": server.answer_model,
                        "choices": [] if fault == "nochoices" else [choice],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
                self._send(200, json.dumps(data).encode())

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _chat(self, number: int, body: dict, fault) -> dict:
        """A chat answer: ``cot words`` + the delimiter + a score token whose top log-probabilities are
        the score candidates' (``impossible``: all at ``impossible_logprob``)."""
        top = score_logprobs(body["messages"][-1]["content"])
        if fault == "impossible":
            top = {k: self.impossible_logprob for k in top}
        best = max(top, key=top.get)
        tokens = [("cot words ", -0.1, {}), (DELIMITER, -0.1, {}), (" " + best, top[best], top)]
        content = [{"token": t, "logprob": lp, "bytes": None,
                    "top_logprobs": [{"token": " " + k, "logprob": v, "bytes": None} for k, v in alts.items()]
                    or [{"token": t, "logprob": lp, "bytes": None}]} for t, lp, alts in tokens]
        choice = {"index": 0, "finish_reason": "stop", "logprobs": {"content": content},
                  "message": {"role": "assistant", "content": "".join(t for t, _, _ in tokens)}}
        return {"id": f"chat-{number}", "object": "chat.completion", "created": 0, "model": self.answer_model,
                "choices": [choice], "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}}

    def _echo(self, body: dict) -> dict:
        """A completion that echoes the prompt (plus one generated token unless ``max_tokens`` is 0)."""
        import itertools

        prompt = body["prompt"]
        generated = [] if body.get("max_tokens") == 0 else ["!"]
        if self.echo == "ignore":  # a server that does not echo: log-probabilities of what it generated only
            return {"text": "!", "finish_reason": "length", "logprobs": {
                "tokens": ["!"], "token_logprobs": [TOP_LOGPROB], "top_logprobs": [{"!": TOP_LOGPROB}],
                "text_offset": [0]}}
        tokens = echo_tokens(prompt, self.echo)
        values = [None] + [prompt_token_logprob(t) for t in tokens[1:]]
        tops = [None] + [{t: v, **({} if v == TOP_LOGPROB else {TOP_TOKEN: TOP_LOGPROB})}
                         for t, v in zip(tokens[1:], values[1:])]
        text = "" if isinstance(prompt, list) else prompt
        lengths = [len(t) if text else 0 for t in tokens + generated]
        return {"text": text + "".join(generated), "finish_reason": "length", "logprobs": {
            "tokens": tokens + generated, "token_logprobs": values + [TOP_LOGPROB] * len(generated),
            "top_logprobs": tops + [{g: TOP_LOGPROB} for g in generated],
            "text_offset": [0, *itertools.accumulate(lengths)][:len(lengths)]}}

    def __enter__(self) -> "FaultyOpenAIServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
