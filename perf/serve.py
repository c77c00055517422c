"""Load on ``tract-eval serve``: N items as N concurrent single-item requests vs one N-item request.

Starts the server on 127.0.0.1 (a free port, the embedded model unless --model), warms it up with one
request, then times, --repeats times each and alternating, (a) N threads each posting one item and
(b) one request of the same N items, and prints items/s for both and their ratio, with how many
model batches the server ran for each. It stops the server itself (SIGINT) and every request has a
timeout, so the run is bounded. The items carry ids 1..N in both shapes, so both judge the same rows
with the same random streams (their scores are compared too).

    python perf/serve.py --n 16 --max-new-tokens 16
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
TOPICS = ["the water cycle", "photosynthesis", "compound interest", "the French Revolution", "binary search",
          "plate tectonics", "vaccines", "inflation", "black holes", "the Pythagorean theorem", "recycling",
          "sleep", "volcanoes", "supply and demand", "DNA", "electric circuits"]


def items(n: int) -> list[dict]:
    return [{"id": str(k + 1), "instruction": f"Explain {TOPICS[k % len(TOPICS)]} in two sentences.",
             "response": f"{TOPICS[k % len(TOPICS)].capitalize()} is a topic many people study; it matters because "
                         "it shapes how we understand the world around us.",
             "rubric": "Is the explanation accurate and clear?"} for k in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args, port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "tract_eval", "serve", "--judge", args.judge, "--port", str(port),
               "--max-new-tokens", str(args.max_new_tokens), "--max-items", str(max(args.n, 1)), "-q"]
    if args.model:
        command += ["--model", args.model]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(command, stdout=open(log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True)


def wait_ready(proc: subprocess.Popen, url: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            return httpx.get(f"{url}/health", timeout=5).json()
        except httpx.TransportError:
            time.sleep(1)
    raise SystemExit(f"the server was not ready in {timeout:.0f}s")


def timed(url: str, shape: str, rows: list[dict], timeout: float) -> tuple[float, list[float], int]:
    """Seconds, the scores in order, and the model batches the server ran for them."""
    before = httpx.get(f"{url}/health", timeout=30).json()["batches"]
    started = time.perf_counter()
    if shape == "batched":
        answer = httpx.post(f"{url}/v1/grade", json={"items": rows}, timeout=timeout)
        answer.raise_for_status()
        scores = [r["score"] for r in answer.json()["results"]]
    else:
        def one(row):
            with httpx.Client(timeout=timeout) as client:
                reply = client.post(f"{url}/v1/grade", json={"items": [row]})
                reply.raise_for_status()
                return reply.json()["results"][0]["score"]

        with ThreadPoolExecutor(len(rows)) as pool:
            scores = list(pool.map(one, rows))
    seconds = time.perf_counter() - started
    return seconds, scores, httpx.get(f"{url}/health", timeout=30).json()["batches"] - before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=16, help="items (and concurrent clients)")
    parser.add_argument("--judge", default="tract")
    parser.add_argument("--model", default=None, help="default: the card's, else the embedded SmolLM2-135M")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each shape, alternating")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per request and for the start")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers here (JSON)")
    args = parser.parse_args()
    if args.n < 1 or args.repeats < 1:
        parser.error("--n and --repeats must be >= 1")
    port, log = free_port(), Path(os.environ.get("TMPDIR", "/tmp")) / f"tract-eval-serve-perf-{os.getpid()}.log"
    url = f"http://127.0.0.1:{port}"
    proc = start(args, port, log)
    try:
        health = wait_ready(proc, url, args.timeout)
        rows = items(args.n)
        httpx.post(f"{url}/v1/grade", json={"items": rows[:1]}, timeout=args.timeout).raise_for_status()  # warm-up
        runs: dict[str, list[tuple[float, list[float], int]]] = {"batched": [], "concurrent": []}
        for _ in range(args.repeats):
            for shape in ("batched", "concurrent"):
                runs[shape].append(timed(url, shape, rows, args.timeout))
                seconds, _, batches = runs[shape][-1]
                print(f"{shape:10s} {args.n} items in {seconds:7.2f} s = {args.n / seconds:6.3f} items/s "
                      f"({batches} model batch{'es' if batches != 1 else ''})", flush=True)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    best = {shape: min(r[0] for r in results) for shape, results in runs.items()}
    rate = {shape: args.n / seconds for shape, seconds in best.items()}
    # the same rows and random streams: the same CoTs; float32 sums move with the batch's shape (~1e-6)
    differences = [abs(a - b) for a, b in zip(runs["batched"][0][1], runs["concurrent"][0][1])]
    ratio = rate["concurrent"] / rate["batched"]
    print(f"best of {args.repeats}: batched {rate['batched']:.3f} items/s, concurrent {rate['concurrent']:.3f} "
          f"items/s, ratio {ratio:.2f} (target >= 0.8); largest score difference between the shapes "
          f"{max(differences):.1e}")
    report = {"n": args.n, "judge": args.judge, "model": health.get("model"), "max_new_tokens": args.max_new_tokens,
              "seconds": {shape: [r[0] for r in results] for shape, results in runs.items()},
              "batches": {shape: [r[2] for r in results] for shape, results in runs.items()},
              "items_per_s": rate, "ratio": ratio, "largest_score_difference": max(differences),
              "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "platform": platform.platform()}}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
