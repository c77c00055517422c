"""Reliability and security, round 2 (issue 19): what an adversarial user tried, each as a probe.

Card templates render in a sandbox and are named, never pathed; secrets never reach a file; impossible
log-probabilities are counted failures; identities (served model, benchmark) are compared before data
is mixed; server-caused failures are retried; broken plugins and boolean gold are named.
"""
from __future__ import annotations

import json

import pytest

from tract_eval.cli import main
from tract_eval.judges import load_judge_card
from tract_eval.errors import ConfigError, UserError

pytestmark = pytest.mark.reliability

PAYLOADS = {  # what the issue ran: a command, and a file read into the model input
    "popen": "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "open": "{{ self.__init__.__globals__.__builtins__.open('SECRET').read() }}",
}


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# -- 1. card templates cannot run code ----------------------------------------------------------------
@pytest.fixture()
def no_model_loads(monkeypatch):
    """The refusals below come before a backend (and so a model) is created."""
    from tract_eval.judges import base as judge_base

    def refuse(*args, **kwargs):
        raise AssertionError("a model was about to load")

    monkeypatch.setattr(judge_base, "create_backend", refuse)


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_a_card_template_that_reaches_for_code_is_refused_naming_card_and_template(tmp_path, capsys, payload,
                                                                                   no_model_loads):
    marker, secret = tmp_path / "MARKER", tmp_path / "SECRET"
    secret.write_text("the secret")
    text = PAYLOADS[payload].replace("MARKER", str(marker)).replace("SECRET", str(secret))
    (tmp_path / "evil.j2").write_text("###Task Description:\n" + text + "\n{{ instruction }}\n")
    card = tmp_path / "evil-card.yaml"
    card.write_text("protocol: cot-rail\ntemplate: evil\n")
    err = one_line_error(capsys, ["run", "--judge", str(card), "--bench", "vicuna", "--out", str(tmp_path / "o")])
    assert "judge card evil-card: template" in err and "evil.j2 refused" in err and "unsafe" in err
    assert not marker.exists() and "the secret" not in err


def test_the_report_template_renders_in_the_sandbox(tmp_path, monkeypatch):
    import shutil

    from tract_eval.cards import cards_root
    from tract_eval.prompts import UnsafeTemplate
    from tract_eval.reports.render import TEMPLATE, to_latex
    from tract_eval.reports.table import Table

    root = tmp_path / "cards"
    shutil.copytree(cards_root() / "judges", root / "judges")
    (root / "reports" / "templates").mkdir(parents=True)
    marker = tmp_path / "MARKER"
    (root / "reports" / "templates" / TEMPLATE).write_text(
        "<< cycler.__init__.__globals__.os.popen('touch " + str(marker) + "').read() >>")
    monkeypatch.setenv("TRACT_EVAL_CARDS", str(root))
    with pytest.raises(UnsafeTemplate, match=f"report template .*{TEMPLATE} refused"):
        to_latex(Table(judges=[], columns=[], cells={}, counts={}, benches=[], averaged=[]))
    assert not marker.exists()
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from tract_eval.reports.view import site
    assert isinstance(site._environment(), ImmutableSandboxedEnvironment)  # the HTML report's templates too


# -- 2. template names are names ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../../../../tmp/x", "/etc/passwd", "sub/x", "..", "x/../../y"])
def test_a_template_name_that_is_a_path_is_refused(tmp_path, name):
    (tmp_path / "x.j2").write_text("{{ instruction }}")
    card = tmp_path / "card.yaml"
    card.write_text(f"protocol: cot-rail\ntemplate: {json.dumps(name)}\n")
    with pytest.raises(ConfigError, match=r"template .* is not a plain name"):
        load_judge_card(str(card))


# -- fixtures for the server probes ---------------------------------------------------------------------
def openai_judge(url, tokenizer_dir, **settings):
    from tract_eval.judges import build_judge

    options = {"base_url": url, "tokenizer": str(tokenizer_dir), "max_retries": 1, "timeout": 2, "concurrency": 2,
               **settings.pop("backend_options", {})}
    return build_judge("tract", backend="openai", backend_options=options, max_new_tokens=8, **settings)


def run_against(server, tokenizer_dir, bench, out, limit=3, **settings):
    from tract_eval.runner import run_benchmark

    return run_benchmark(openai_judge(server.base_url, tokenizer_dir, **settings), bench, out, limit=limit)


@pytest.fixture(scope="module")
def vicuna(data_dir):
    from tract_eval.benchmarks import load_benchmark

    return load_benchmark("vicuna", data_dir)


def rows_of(result):
    from tract_eval.records import read_predictions

    return read_predictions(result.out_dir / "predictions.jsonl")


# -- 3. the API key never reaches disk ------------------------------------------------------------------
@pytest.mark.slow  # starts a local server
def test_a_proxy_echoing_the_authorization_header_leaves_no_key_on_disk_or_in_logs(
        tmp_path, tokenizer_dir, vicuna, monkeypatch, caplog):
    pytest.importorskip("openai")
    from fake_openai import FaultyOpenAIServer

    key = "sk-test-0123456789abcdefSECRET"
    monkeypatch.setenv("TRACT_TEST_KEY", key)
    with FaultyOpenAIServer(lambda n, body: "echoauth" if body.get("max_tokens") == 1 else None) as server:
        result = run_against(server, tokenizer_dir, vicuna, tmp_path, limit=2,
                             backend_options={"api_key_env": "TRACT_TEST_KEY"})
    rows = rows_of(result)
    assert [r.status for r in rows] == ["parse_failure"] * 2
    assert "Authorization: Bearer ***" in rows[0].errors[0]
    written = "".join(p.read_text() for p in result.out_dir.iterdir() if p.is_file()) + caplog.text
    assert "SECRET" not in written and "0123456789" not in written


def test_registered_keys_and_bearer_tokens_are_redacted_from_any_text():
    from tract_eval.redaction import redact_text, register_secret

    register_secret("plain-key-without-shape-42")
    text = 'proxy said: {"api-key": "plain-key-without-shape-42", "Authorization": "Bearer tok.en-123"} sk-abcdefgh1234'
    assert redact_text(text) == 'proxy said: {"api-key": "***", "Authorization": "Bearer ***"} ***'


# -- 4. user-info ends at the authority's last "@" --------------------------------------------------------
@pytest.mark.parametrize("url, shown", [
    ("http://alice:p@ss@host/v1", "http://***@host/v1"),
    ("http://alice:p:s@s@host:8000/v1?x=1", "http://***@host:8000/v1?x=1"),
    ("http://al%40ice:p%3As%40s@host/v1", "http://***@host/v1"),
    ("https://:@@@host", "https://***@host"),
    ("http://host/v1/a@b", "http://host/v1/a@b"),  # an "@" after the authority is not user-info
])
def test_a_password_holding_at_or_colon_is_hidden_whole(url, shown):
    from urllib.parse import urlsplit

    from tract_eval.redaction import redact_text

    assert redact_text(url) == shown and urlsplit(shown).hostname == urlsplit(url).hostname
    assert redact_text(f"cannot reach {url}: refused") == f"cannot reach {shown}: refused"


# -- 6. impossible log-probabilities are counted failures, never scores -----------------------------------
@pytest.mark.slow  # starts a local server
@pytest.mark.parametrize("mode, value, quoted", [
    ("continue", 2.0, "log-probabilities above 0"),
    ("continue", -0.05, "candidate probabilities adding up to 4.756 > 1"),
    ("single", 1.5, "log-probabilities above 0"),
])
def test_impossible_log_probabilities_are_counted_failures_quoting_the_server(
        tmp_path, tokenizer_dir, vicuna, mode, value, quoted):
    pytest.importorskip("openai")
    from fake_openai import FaultyOpenAIServer

    def faults(number, body):
        return "impossible" if body.get("max_tokens") == 1 or "messages" in body else None

    with FaultyOpenAIServer(faults, impossible_logprob=value) as server:
        result = run_against(server, tokenizer_dir, vicuna, tmp_path, backend_options={"mode": mode})
    rows = rows_of(result)
    assert [(r.status, r.prediction) for r in rows] == [("parse_failure", None)] * 3
    assert all(quoted in r.errors[0] and repr(value) in r.errors[0] for r in rows), rows[0].errors
    assert result.metrics["n"] == 0 and result.metrics["parse_failures"] == 3


def test_an_impossible_local_readout_stops_the_run_writing_no_row(tmp_path, vicuna):
    from test_runner import LengthBackend
    from tract_eval.judges import build_judge
    from tract_eval.runner import run_benchmark

    class Broken(LengthBackend):
        def _completion(self, prompt, index):
            done = super()._completion(prompt, index)
            done.candidate_logprobs = {s: float("nan") if s == 3 else lp for s, lp in done.candidate_logprobs.items()}
            return done

    with pytest.raises(RuntimeError, match="not numbers: .*nan.*this is a bug"):
        run_benchmark(build_judge("tract", backend=Broken()), vicuna, tmp_path, limit=2)
    assert not (tmp_path / "tract" / "vicuna" / "predictions.jsonl").read_text()


@pytest.mark.parametrize("logprobs, problem", [
    ({1: 0.0005, 2: -9.0}, None),  # rounding
    ({1: 0.01}, "above 0"), ({1: float("nan")}, "not numbers"), ({1: -0.1, 2: -0.1}, "adding up to"),
    ({1: -float("inf"), 2: 0.0}, None),
])
def test_the_readout_check_allows_rounding_only(logprobs, problem):
    from tract_eval.candidates import impossible_logprobs

    found = impossible_logprobs(logprobs)
    assert found is None if problem is None else problem in found


# -- 9. a plugin cannot end the process ------------------------------------------------------------------
@pytest.fixture()
def installed_plugins(tmp_path, monkeypatch):
    """Two installed judge plugins: one exits the process when imported, one is not a Judge."""
    import sys

    dist = tmp_path / "odd_judges-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: odd-judges\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[tract_eval.judges]\nexits = exiting_judge_module:Judge\nnotajudge = plain_judge_module:NotAJudge\n")
    (tmp_path / "exiting_judge_module.py").write_text("import sys\nsys.exit(0)\n")
    (tmp_path / "plain_judge_module.py").write_text("class NotAJudge:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import tract_eval.judges as judges_module
    from tract_eval.registry import Registry

    fresh = Registry("judge", entry_point_group="tract_eval.judges", check=judges_module.JUDGES.check)
    fresh.register("absolute")(judges_module.Judge)
    monkeypatch.setattr(judges_module, "JUDGES", fresh)
    yield fresh
    for name in ("exiting_judge_module", "plain_judge_module"):
        sys.modules.pop(name, None)


def test_a_plugin_that_exits_or_is_not_a_judge_is_reported_broken(installed_plugins, capsys):
    from tract_eval.registry import PluginWarning

    with pytest.warns(PluginWarning) as caught:
        assert main(["list", "judges"]) == 0
    listed = capsys.readouterr().out
    assert "tract" in listed and "exits" not in listed and "notajudge" not in listed
    messages = sorted(str(w.message) for w in caught if issubclass(w.category, PluginWarning))
    assert len(messages) == 2
    assert "'exits' (exiting_judge_module:Judge)" in messages[0] and "skipped: SystemExit: 0" in messages[0]
    assert "'notajudge'" in messages[1] and "is not a subclass of tract_eval.judges.Judge" in messages[1]
    with pytest.raises(UserError, match="failed to load and is skipped: SystemExit"):
        installed_plugins.get("exits")


# -- 10. booleans are not scores -------------------------------------------------------------------------
@pytest.mark.parametrize("gold", [True, False])
def test_boolean_gold_is_refused_naming_file_row_and_field(tmp_path, gold):
    from tract_eval.benchmarks import DataFormatError, load_benchmark

    path = tmp_path / "mine.jsonl"
    rows = [{"instruction": "i", "response": "r", "rubric": "be good", "score": 3 if i != 1 else gold}
            for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataFormatError, match=rf"mine.jsonl: row 2: field 'score': needs a number, got {gold}"):
        load_benchmark(str(path))


# -- 5. the served model is part of the run identity --------------------------------------------------------
@pytest.mark.slow  # starts local servers
def test_another_served_model_into_the_same_folder_is_refused_naming_it(tmp_path, tokenizer_dir, vicuna):
    pytest.importorskip("openai")
    from fake_openai import FaultyOpenAIServer
    from tract_eval.backends.openai_backend import ServedModelChanged
    from tract_eval.runner import RunConflict

    with FaultyOpenAIServer(model_id="judge-a") as server:
        first = run_against(server, tokenizer_dir, vicuna, tmp_path, limit=3)
    with FaultyOpenAIServer(model_id="judge-b") as server, \
            pytest.raises(RunConflict, match=r'model\.served_model: "judge-a" -> "judge-b"'):
        run_against(server, tokenizer_dir, vicuna, tmp_path, limit=5)
    # the same id listed, another model answering (a proxy rerouted): refused at its first answer
    with FaultyOpenAIServer(model_id="judge-a", answer_model="judge-z") as server, \
            pytest.raises(ServedModelChanged, match=r"now answers as model 'judge-z'.* answered by 'judge-a'"):
        run_against(server, tokenizer_dir, vicuna, tmp_path, limit=5)
    assert len(rows_of(first)) == 3
    sessions = json.loads((first.out_dir / "manifest.json").read_text())["sessions"]
    assert sessions[0]["answered_by"] == ["judge-a"] and sessions[0]["ended"] == "completed"
    assert sessions[1]["ended"].startswith("failed: ServedModelChanged")
    assert json.loads((first.out_dir / "manifest.json").read_text())["identity"]["model"] == {"served_model": "judge-a"}


# -- 8. a transient outage leaves no permanent failures -----------------------------------------------------
def _length_backend(kind):
    """LengthBackend whose readouts fail: at the server (an error quoted), at the model (no score), or not."""
    from test_runner import LengthBackend

    class Failing(LengthBackend):
        def _completion(self, prompt, index):
            done = super()._completion(prompt, index)
            if kind:
                done.candidate_logprobs = None
                done.error = "completions response from http://srv/v1: unreadable body" if kind == "server" else None
            return done

    return Failing()


@pytest.mark.parametrize("kind", ["server", "model"])
def test_server_failures_are_judged_again_model_failures_kept_unless_asked(tmp_path, vicuna, kind):
    from tract_eval.judges import build_judge
    from tract_eval.runner import run_benchmark

    def run(backend_kind, **options):
        return run_benchmark(build_judge("tract", backend=_length_backend(backend_kind)), vicuna, tmp_path, limit=3,
                             **options)

    failed = run(kind)
    assert [(r.status, r.failure) for r in rows_of(failed)] == [("parse_failure", kind)] * 3
    again = run(None)  # the server is fixed
    if kind == "server":
        assert (again.new_samples, again.reused_samples) == (3, 0) and again.metrics["n"] == 3
    else:
        assert (again.new_samples, again.reused_samples) == (0, 3) and again.metrics["n"] == 0
        redone = run(None, rejudge_failures=True)
        assert (redone.new_samples, redone.reused_samples) == (3, 0)
    rows = rows_of(failed)
    assert [(r.status, r.failure) for r in rows] == [("ok", None)] * 3 and len({r.id for r in rows}) == 3


def test_the_cli_takes_rejudge_failures():
    from tract_eval.cli import build_parser

    args = build_parser().parse_args(["run", "--judge", "tract", "--bench", "vicuna", "--rejudge-failures"])
    assert args.rejudge_failures is True


# -- Also: sessions are recorded when they start, marked when they end; stale temporaries removed -----------
def test_a_killed_or_disk_full_session_is_in_the_manifest_and_its_leftovers_are_cleaned(tmp_path, vicuna,
                                                                                        monkeypatch):
    import errno
    import os
    import signal

    from test_runner import LengthBackend
    from tract_eval import records
    from tract_eval.judges import build_judge
    from tract_eval.runner import UNFINISHED, run_benchmark

    def run(backend, limit):
        return run_benchmark(build_judge("tract", backend=backend), vicuna, tmp_path, limit=limit)

    class Killed(LengthBackend):  # SIGKILLed after two rows
        def _completion(self, prompt, index):
            if self.judged == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return super()._completion(prompt, index)

    pid = os.fork()
    if pid == 0:
        try:
            run(Killed(), 4)
        finally:
            os._exit(1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == -signal.SIGKILL
    folder = tmp_path / "tract" / "vicuna"
    assert [s["ended"] for s in json.loads((folder / "manifest.json").read_text())["sessions"]] == ["running"]

    real_replace = records.os.replace

    def disk_full(src, dst):  # the end of the next session cannot be written
        if str(dst).endswith("manifest.json") and json.loads(open(src).read())["sessions"][-1]["ended"] != "running":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(records.os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run(LengthBackend(), 5)
    assert (folder / "manifest.json.tmp").exists()
    monkeypatch.setattr(records.os, "replace", real_replace)
    result = run(LengthBackend(), 6)
    assert not list(folder.glob("*.tmp")) and result.new_samples == 1
    ended = [s["ended"] for s in json.loads((folder / "manifest.json").read_text())["sessions"]]
    assert ended == [UNFINISHED, UNFINISHED, "completed"]


# -- 7. compare and report refuse runs of different data under one benchmark name ---------------------------
def test_compare_and_report_refuse_runs_on_different_data_naming_the_difference(tmp_path, data_dir, capsys):
    import shutil

    from test_runner import LengthBackend
    from tract_eval.benchmarks import load_benchmark
    from tract_eval.judges import build_judge
    from tract_eval.runner import run_benchmark

    for copy, judge in (("one", "tract"), ("two", "rail")):
        shutil.copytree(data_dir / "prometheus", tmp_path / copy / "prometheus")
        if copy == "two":  # the same ids and gold, another response to judge
            path = tmp_path / copy / "prometheus" / "vicuna_eval.json"
            rows = json.loads(path.read_text())
            rows[0]["instruction"] = rows[0]["instruction"].replace("###Response to evaluate:\n",
                                                                    "###Response to evaluate:\nEdited. ")
            path.write_text(json.dumps(rows))
        run_benchmark(build_judge(judge, backend=LengthBackend()), load_benchmark("vicuna", tmp_path / copy),
                      tmp_path / f"out-{copy}", limit=6)
    a, b = str(tmp_path / "out-one" / "tract"), str(tmp_path / "out-two" / "rail")
    for argv in (["compare", a, b, "--resamples", "20"], ["report", a, b]):
        err = one_line_error(capsys, argv)
        assert "vicuna: " in err and "were judged on different benchmarks: bench.data." in err
        assert "vicuna_eval.json" in err and "--allow-different-data" in err
        assert main(argv + ["--allow-different-data"]) == 0
        captured = capsys.readouterr()
        assert captured.err.startswith("WARNING: vicuna: ") and "different benchmarks" in captured.err
    # the same data twice is no difference
    assert main(["compare", a, str(tmp_path / "out-one" / "tract"), "--resamples", "20"]) == 0
    assert "WARNING" not in capsys.readouterr().err


# -- 11. a sample written twice is refused by every reader, in the same words -------------------------------
def test_a_duplicated_predictions_line_is_refused_the_same_way_by_run_report_compare_and_merge(
        tmp_path, vicuna, capsys):
    from test_runner import LengthBackend
    from tract_eval.judges import build_judge
    from tract_eval.records import CorruptPredictions
    from tract_eval.runner import merge_shards, run_benchmark

    def run(**options):
        return run_benchmark(build_judge("tract", backend=LengthBackend()), vicuna, tmp_path, limit=4, **options)

    path = run().out_dir / "predictions.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines + [lines[1]]))  # a line pasted twice
    expected = f"{path}: line 5 repeats sample {json.loads(lines[1])['id']!r} (first on line 2); remove one of the two lines"
    with pytest.raises(CorruptPredictions) as caught:
        run()
    messages = {str(caught.value)}
    for argv in (["report", str(tmp_path)], ["compare", str(tmp_path / "tract"), str(tmp_path / "tract")]):
        messages.add(one_line_error(capsys, argv).split("error: ", 1)[1])
    shard = run(shard=(0, 1)).out_dir / "predictions.jsonl"
    shard.write_text(shard.read_text() + shard.read_text().splitlines(keepends=True)[0])
    with pytest.raises(CorruptPredictions, match="line 5 repeats sample .* remove one of the two lines"):
        merge_shards(tmp_path / "tract" / "vicuna", vicuna)
    assert messages == {expected}
    assert path.read_text() == "".join(lines + [lines[1]])  # nothing was rewritten or dropped
