"""Real servers for the backend tests, on 127.0.0.1 only, each stopped by the test that started it.

The serving stacks live in their own virtualenvs (``.ci/backends.sh``): ``$TRACT_EVAL_VENVS/llama``
(llama-cpp-python's OpenAI-compatible server) and ``$TRACT_EVAL_VENVS/vllm`` (vLLM CPU).
"""
from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENVS = Path(os.environ.get("TRACT_EVAL_VENVS", "~/.cache/tract-eval/venvs")).expanduser()


def venv_python(name: str) -> Path:
    """The interpreter of an optional serving environment; skips (fails under CI) when absent."""
    python = VENVS / name / "bin" / "python"
    if not (VENVS / name / ".recipe").is_file() or not python.is_file():
        reason = f"the {name} environment is not installed at {VENVS / name}: run  bash .ci/backends.sh {name}"
        if os.environ.get("CI"):
            pytest.fail(reason + " (.ci/run installs it, so under CI this is an error)")
        pytest.skip(reason)
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quiet_env(tmp: Path) -> dict:
    """Environment for vLLM processes: caches inside ``tmp``, threads and KV cache sized for this machine."""
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "2"),
        "VLLM_CPU_KVCACHE_SPACE": env.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        "VLLM_CACHE_ROOT": str(tmp / "vllm-cache"),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp / "inductor-cache"),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    })
    return env


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM the process group we started, then SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextmanager
def openai_server(command: list[str], port: int, log_path: Path, env: dict | None = None, start_timeout: float = 600):
    """Start an OpenAI-compatible server and yield its base URL once ``/v1/models`` answers."""
    log = open(log_path, "wb")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(base_url + "/models", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not up after {start_timeout} s: {log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield base_url
    finally:
        stop_process(proc)
        log.close()


class FlakyProxy:
    """A local endpoint that fails the first POSTs as scripted, then forwards to a real server.

    ``script`` items: an HTTP status (429, 500, 503, ...), ``"drop"`` (close the connection
    without answering) or ``"stall"`` (answer nothing for ``stall_seconds``).
    """

    def __init__(self, upstream: str, script: list, stall_seconds: float = 5.0):
        self.upstream = upstream.rstrip("/")
        self.script = list(script)
        self.stall_seconds = stall_seconds
        self.posts = 0
        self.failures_sent = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                self._forward(None)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with proxy._lock:
                    proxy.posts += 1
                    action = proxy.script.pop(0) if proxy.script else None
                    if action is not None:
                        proxy.failures_sent += 1
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if action == "stall":
                    time.sleep(proxy.stall_seconds)
                    self.close_connection = True
                    return
                if action is not None:
                    payload = json.dumps({"error": {"message": f"scripted {action}", "code": action}}).encode()
                    self.send_response(int(action))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.send_header("retry-after-ms", "50")  # keep the test fast; the client honours it
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                self._forward(body)

            def _forward(self, body):
                request = urllib.request.Request(proxy.upstream + self.path.removeprefix("/v1"), data=body,
                                                 headers={"Content-Type": "application/json"},
                                                 method="POST" if body is not None else "GET")
                with urllib.request.urlopen(request, timeout=600) as response:
                    payload = response.read()
                    self.send_response(response.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FlakyProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
