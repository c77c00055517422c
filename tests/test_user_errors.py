"""Issue 19, items 12-19: every user mistake is one line on stderr and exit status 2, found before any model
loads where it can be. Each case is one reliability probe: the CLI runs (in process, or as a subprocess where
logging and progress bars matter) and must print exactly one line naming the thing at fault."""
from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import tract_eval
from tract_eval.cli import main
from tract_eval.judges import base as judge_base

pytestmark = pytest.mark.reliability

PACKAGE_ROOT = Path(tract_eval.__file__).resolve().parents[1]  # the subprocesses run the tract_eval under test
GOOD_ROW = {"instruction": "Say hi", "response": "hi", "rubric": "Is it polite?", "score": 3}


@pytest.fixture()
def no_model_loads(monkeypatch):
    """The error must be found before a backend (and so a model) is created."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was about to load")

    monkeypatch.setattr(judge_base, "create_backend", refuse)


def one_line(capsys, argv: list[str]) -> str:
    """Runs the CLI in process; returns its one line of stderr after checking the exit status is 2."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    print(f"\n{lines[0]}")  # -s shows what a user sees, for the closing note
    return lines[0]


def run_args(bench, out: Path, *extra: str) -> list[str]:
    return ["run", "--judge", "tract", "--bench", str(bench), "--out", str(out), "--limit", "2", *extra]


# -- 12, 18: data files ------------------------------------------------------------------------------------
def test_12_a_non_utf8_byte_in_a_jsonl_names_file_line_and_byte(capsys, tmp_path, no_model_loads):
    path = tmp_path / "mine.jsonl"
    first = json.dumps(GOOD_ROW).encode() + b"\n"
    path.write_bytes(first + b'{"instruction": "caf\xe9", "response": "x"}\n')
    line = one_line(capsys, run_args(path, tmp_path / "runs"))
    byte = len(first) + len(b'{"instruction": "caf')
    assert f"{path}: not UTF-8 at byte {byte} (line 2)" in line and "re-save the file as UTF-8" in line


DATA_PROBLEMS = {  # file name, bytes, what the one line says
    "empty-jsonl": ("empty.jsonl", b"", "empty.jsonl: holds no rows"),
    "lines-not-objects": ("lists.jsonl", b"[1, 2]\n[3, 4]\n", "lists.jsonl: line 1: [1, 2] is not a JSON object"),
    "latin1-json": ("latin.json", json.dumps([{**GOOD_ROW, "instruction": "caf\u00e9"}], ensure_ascii=False)
                    .encode("latin-1"), "latin.json: not UTF-8 at byte 21 (line 1)"),
    "header-only-csv": ("header.csv", b"instruction,response,rubric,score\n", "header.csv: holds no rows (only a header)"),
    "ragged-csv": ("ragged.csv", b"instruction,response,rubric\nQ,A\n", "ragged.csv: row 1: has 2 cells, the header 3"),
    "malformed-jsonl": ("broken.jsonl", (json.dumps(GOOD_ROW) + '\n{"instruction": "x",\n').encode(),
                        "broken.jsonl: cannot read it as json: line 2, column 21: Expecting property name"),
}


@pytest.mark.parametrize("case", DATA_PROBLEMS)
def test_18_data_problems_are_one_line_not_datasets_internals(capsys, tmp_path, no_model_loads, case):
    name, data, expected = DATA_PROBLEMS[case]
    (tmp_path / name).write_bytes(data)
    line = one_line(capsys, run_args(tmp_path / name, tmp_path / "runs"))
    assert expected in line, line


def test_18_a_csv_with_a_byte_order_mark_is_read(tmp_path):
    from tract_eval.benchmarks import load_benchmark

    path = tmp_path / "excel.csv"
    path.write_text("instruction,response,rubric,score\nSay hi,hi,Polite?,3\n", encoding="utf-8-sig")
    bench = load_benchmark(str(path))
    assert [(s.fields.instruction, s.gold) for s in bench.samples] == [("Say hi", 3.0)]


def test_18_a_malformed_jsonl_under_quiet_is_one_line_without_library_logs(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(GOOD_ROW) + "\n" + json.dumps(GOOD_ROW)[:-1] + "\n" + json.dumps(GOOD_ROW) + "\n")
    done = subprocess.run([sys.executable, "-m", "tract_eval", "run", "--judge", "tract", "--bench", str(path),
                           "--out", str(tmp_path / "runs"), "-q"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)})
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "ERROR" not in done.stderr
    assert f"{path}: cannot read it as json: line 2, column" in done.stderr


# -- 19: the scale -------------------------------------------------------------------------------------------
def test_19_a_scale_too_wide_is_refused_before_any_model_loads(capsys, tmp_path, no_model_loads):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(GOOD_ROW) + "\n")
    line = one_line(capsys, run_args(path, tmp_path / "runs", "--scale", "0-1000000"))
    assert line.endswith("--scale '0-1000000': 1000001 scores; a scale has at most 101 (e.g. 0-100)")
    assert main(["run", "--judge", "tract", "--bench", str(path), "--scale", "0-100", "--limit", "0"]) == 2  # 101 is fine
    assert "--limit must be" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "at most 101 scores (0-100)" in " ".join(capsys.readouterr().out.split())


# -- 16: where the run goes and on what ---------------------------------------------------------------------
def test_16_a_cuda_device_torch_cannot_use(capsys, tmp_path, data_dir, no_model_loads):
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    line = one_line(capsys, run_args("vicuna", tmp_path, "--data-dir", str(data_dir), "--device", "cuda:7"))
    assert line.startswith("tract-eval run: error: --device cuda:7: ")
    assert ("this torch is built without CUDA" in line or "no CUDA device is visible" in line
            or "CUDA device(s) are visible (cuda:0 to" in line)


@pytest.mark.parametrize("case", ["file", "proc", "long-run-name"])
def test_16_an_output_folder_that_cannot_be(capsys, tmp_path, data_dir, no_model_loads, case):
    out, extra = tmp_path / "runs", []
    if case == "file":
        out = tmp_path / "a-file"
        out.write_text("not a folder")
        expected = f"--out {out} is a file, not a folder"
    elif case == "proc":
        if not Path("/proc/self").is_dir():
            pytest.skip("no /proc")
        out = Path("/proc/self/x")
        expected = "--out /proc/self/x: cannot create this folder ("
    else:
        extra = ["--run-name", "r" * 300]
        expected = "--run-name 'rrrrrrrrrrrrrrrrrrrrrrrr'... is 300 characters long; a folder name takes at most 128"
    line = one_line(capsys, run_args("vicuna", out, "--data-dir", str(data_dir), *extra))
    assert expected in line, line


# -- 14: OpenAI backend options ------------------------------------------------------------------------------
class KeyedServer:
    """A server that wants an API key: every request without ``Authorization: Bearer <key>`` gets a 401."""

    def __init__(self, key: str):
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                if self.headers.get("Authorization") == f"Bearer {key}":
                    self.send_response(404)
                    payload = b'{"error": {"message": "not here"}}'
                else:
                    self.send_response(401)
                    payload = b'{"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}'
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


OPENAI_OPTIONS = {
    "concurrency-0": (["--concurrency", "0"], "--concurrency 0: need at least 1 request in flight"),
    "max-retries--1": (["--max-retries", "-1"], "--max-retries -1: need 0 or more retries"),
    "mode-bogus": (["--openai-mode", "bogus"], "--openai-mode 'bogus': the openai backend's mode is one of continue, single"),
    "timeout-0": (["--request-timeout", "0"], "--request-timeout 0.0: need a number of seconds > 0"),
    "unset-key-variable": (["--api-key-env", "TRACT_EVAL_TEST_UNSET_KEY"],
                           "--api-key-env TRACT_EVAL_TEST_UNSET_KEY: the environment variable TRACT_EVAL_TEST_UNSET_KEY "
                           "is not set (export the API key in it)"),
}


@pytest.mark.parametrize("case", OPENAI_OPTIONS)
def test_14_bad_openai_options_are_refused_before_connecting(capsys, tmp_path, data_dir, monkeypatch,
                                                              no_model_loads, case):
    monkeypatch.delenv("TRACT_EVAL_TEST_UNSET_KEY", raising=False)
    flags, expected = OPENAI_OPTIONS[case]
    with KeyedServer("sk-right") as server:
        line = one_line(capsys, run_args("vicuna", tmp_path, "--data-dir", str(data_dir), "--backend", "openai",
                                         "--base-url", server.base_url, *flags))
    assert line == f"tract-eval run: error: {expected}", line


def test_14_a_server_that_wants_a_key_it_was_not_given(capsys, tmp_path, data_dir, monkeypatch, tokenizer_dir):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with KeyedServer("sk-right") as server:
        line = one_line(capsys, run_args("vicuna", tmp_path, "--data-dir", str(data_dir), "--backend", "openai",
                                         "--base-url", server.base_url, "--max-retries", "0",
                                         "--backend-option", f"tokenizer={tokenizer_dir}"))
    assert f"openai backend: cannot list models at {server.base_url}/models: HTTP 401: " in line
    assert "set the API key in $OPENAI_API_KEY, or name its variable with --api-key-env" in line


# -- 13: a server that fails for good ------------------------------------------------------------------------
def openai_run(url: str, out: Path, data_dir, tokenizer_dir, *extra: str) -> list[str]:
    return ["run", "--judge", "tract", "--bench", "vicuna", "--data-dir", str(data_dir), "--out", str(out),
            "--limit", "4", "--n-cot", "1", "--max-new-tokens", "8", "--backend", "openai", "--base-url", url,
            "--backend-option", f"tokenizer={tokenizer_dir}", "--concurrency", "1", *extra]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_13_an_unreachable_base_url(capsys, tmp_path, data_dir, tokenizer_dir):
    url = f"http://alice:SECRET@127.0.0.1:{free_port()}/v1"
    line = one_line(capsys, openai_run(url, tmp_path, data_dir, tokenizer_dir, "--max-retries", "1"))
    assert "SECRET" not in line
    assert line.startswith("tract-eval run: error: openai backend: cannot list models at "
                           "http://***@127.0.0.1:") and "/v1/models: cannot connect (" in line


@pytest.mark.slow  # starts a (local, in-process) server
@pytest.mark.parametrize("case", ["persistent-500", "slow-server"])
def test_13_a_server_that_keeps_failing_keeps_the_rows_done(capsys, tmp_path, data_dir, tokenizer_dir, case):
    from fake_openai import FaultyOpenAIServer

    fault = 500 if case == "persistent-500" else "stall"
    # 2 POSTs per row (the CoT, then the score readout) at --n-cot 1: the first two rows finish
    with FaultyOpenAIServer(lambda number, body: fault if number > 4 else None, stall_seconds=2.5) as server:
        server.server.handle_error = lambda *args: None  # a client that gave up (broken pipe) is no news here
        line = one_line(capsys, openai_run(server.base_url, tmp_path, data_dir, tokenizer_dir, "--max-retries", "1",
                                           "--request-timeout", "1"))
    predictions = tmp_path / "tract" / "vicuna" / "predictions.jsonl"
    happened = "HTTP 500: " if fault == 500 else "no answer within 1 s (--request-timeout)"
    assert line.startswith(f"tract-eval run: error: openai backend: completions request to {server.base_url} "
                           f"failed after 1 retries: {happened}"), line
    assert line.endswith(f"; the 2 finished row(s) in {predictions} are kept: rerun the same command to resume")
    assert len(predictions.read_text().splitlines()) == 2


# -- 15: a generation budget beyond any context ---------------------------------------------------------------
@pytest.mark.slow  # starts a (local, in-process) server
def test_15_max_new_tokens_beyond_the_context_is_one_line(capsys, tmp_path, data_dir, tokenizer_dir):
    from fake_openai import FaultyOpenAIServer

    with FaultyOpenAIServer(max_model_len=2048) as server:
        line = one_line(capsys, openai_run(server.base_url, tmp_path, data_dir, tokenizer_dir,
                                           "--max-new-tokens", "100000000000"))
        assert server.posts == 0
    assert line.startswith("tract-eval run: error: --max-new-tokens 100000000000: the generation budget of ")
    assert line.endswith("leaves no room for a prompt in the model's context of 2048 tokens; lower --max-new-tokens")


@pytest.mark.slow  # loads the embedded model
def test_15_max_new_tokens_beyond_the_context_allocates_nothing_on_the_embedded_model(capsys, tmp_path, data_dir,
                                                                                       embedded_backend):
    line = one_line(capsys, ["run", "--judge", "tract", "--bench", "vicuna", "--data-dir", str(data_dir), "--limit", "1",
                             "--out", str(tmp_path), "--max-new-tokens", "100000000000", "-q"])  # -q: no load bars
    assert "--max-new-tokens 100000000000: the generation budget of " in line and "context of 8192 tokens" in line


# -- 17: run files that are JSON but not what a run writes ----------------------------------------------------
NOT_ROWS = {  # a line in the middle of predictions.jsonl, and what the one line says about it
    "empty-object": ("{}", "line 2 has no field 'id'"),
    "a-list": ("[1]", "line 2 is a JSON list, not an object"),
    "prediction-text": (json.dumps({"id": "x", "gold": 3.0, "prediction": "abc", "status": "ok"}),
                        "line 2 field 'prediction' must be a number or null, not 'abc'"),
}


def corrupt_run(folder: Path, case: str) -> tuple[Path, str]:
    """Spoils one file of a finished run folder; returns the file and what the one line must say of it."""
    if case == "manifest-list":
        (folder / "manifest.json").write_text("[]\n")
        return folder / "manifest.json", "holds a JSON list, not an object"
    line, said = NOT_ROWS[case]
    path = folder / "predictions.jsonl"
    rows = path.read_text().splitlines()
    path.write_text("\n".join([rows[0], line, *rows[1:]]) + "\n")
    return path, said


@pytest.mark.parametrize("command", ["run", "report", "merge"])
@pytest.mark.parametrize("case", [*NOT_ROWS, "manifest-list"])
def test_17_a_run_file_that_is_json_but_not_a_run_names_file_and_line(capsys, tmp_path, data_dir, no_model_loads,
                                                                      command, case):
    from test_runner import LengthBackend
    from tract_eval.benchmarks import load_benchmark
    from tract_eval.judges import build_judge
    from tract_eval.runner import run_benchmark

    vicuna = load_benchmark("vicuna", data_dir)
    bench_dir = tmp_path / "tract" / "vicuna"
    shard = (0, 2) if command == "merge" else None
    for index in ([0, 1] if shard else [None]):
        run_benchmark(build_judge("tract", backend=LengthBackend(), n_cot=1), vicuna, tmp_path, limit=6,
                      shard=None if index is None else (index, 2))
    spoiled, said = corrupt_run(bench_dir / "shards" / "0-of-2" if shard else bench_dir, case)
    argv = {"run": ["run", "--judge", "tract", "--bench", "vicuna", "--n-cot", "1", "--limit", "6", "--out",
                    str(tmp_path), "--data-dir", str(data_dir)],
            "report": ["report", str(tmp_path)],
            "merge": ["merge", str(bench_dir), "--data-dir", str(data_dir)]}[command]
    line = one_line(capsys, argv)
    assert f"{spoiled}: " in line and said in line, line
