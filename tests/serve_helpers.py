"""Starting and stopping a real ``tract-eval serve`` (a subprocess on 127.0.0.1) for the serve tests and perf/serve.py."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], port: int, log_path: Path, env: dict | None = None) -> subprocess.Popen:
    environment = dict(os.environ if env is None else env)
    environment["PYTHONPATH"] = str(REPO) + os.pathsep + environment.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "tract_eval", "serve", "--port", str(port), *args]
    return subprocess.Popen(command, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=environment, start_new_session=True)


def wait_ready(proc: subprocess.Popen, url: str, log_path: Path, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{Path(log_path).read_text()[-3000:]}")
        try:
            answer = httpx.get(f"{url}/health", timeout=5)
            if answer.status_code == 200 and answer.json()["ready"]:
                return answer.json()
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the server did not answer /health in {timeout:.0f}s:\n{Path(log_path).read_text()[-3000:]}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    """Signal the server's process group; SIGKILL it (and fail) if it does not exit in ``timeout``."""
    if proc.poll() is not None:
        return proc.returncode
    os.killpg(proc.pid, sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        raise AssertionError(f"the server did not exit within {timeout}s of signal {sig}") from None


@contextmanager
def running_server(args: list[str], log_path: Path, env: dict | None = None):
    """A served judge: yields (base url, process); SIGTERM on the way out."""
    port = free_port()
    proc = start_server(args, port, log_path, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, log_path)
        yield url, proc
    finally:
        stop(proc)
