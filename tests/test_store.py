"""The one resumable store (tract_eval.store): torn-line repair, pending samples, one appender per session,
the lock, the identity check; and its three users (run folders, self-generated CoTs, the scaling CoT cache)
resuming through it after a simulated kill. No model is loaded."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from tract_eval import records, store as store_module
from tract_eval.identity import RunIdentity
from tract_eval.records import Prediction, RunLocked, read_jsonl
from tract_eval.store import RunConflict, RunStore

from test_runner import LengthBackend, vicuna  # noqa: F401 - vicuna is a fixture

A = RunIdentity({"name": "tract", "seed": 0}, {"model": "m"}, {})
B = RunIdentity({"name": "tract", "seed": 1}, {"model": "m"}, {})


@dataclass
class Item:
    id: str


def _row(sample_id: str) -> dict:
    return {"id": sample_id, "cot": f"cot of {sample_id}"}


@pytest.fixture()
def opened(monkeypatch):
    """How many appenders the store opens: one per session, never one per row."""
    count = []

    class Counting(records.JsonlAppender):
        def __init__(self, path):
            count.append(path)
            super().__init__(path)

    monkeypatch.setattr(store_module, "JsonlAppender", Counting)
    return count


def test_a_torn_last_line_is_cut_off_and_appending_resumes_on_a_clean_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(_row("a")) + "\n" + json.dumps(_row("b")) + "\n" + '{"id": "c", "co')  # killed
    peek = RunStore.file(path, "--out")
    peek.load()  # a look without the lock skips the torn line and leaves the file alone
    assert list(peek.rows) == ["a", "b"] and path.read_text().endswith('"co')
    with RunStore.file(path, "--out") as store:
        assert list(store.rows) == ["a", "b"] and path.read_text().endswith("\n")
        store.append(_row("c"))
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b", "c"]


def test_pending_samples_are_those_without_a_row(tmp_path):
    with RunStore.file(tmp_path / "rows.jsonl", "--out") as store:
        store.append(_row("b"))
        assert store.pending([Item("a"), Item("b"), Item("c")]) == [Item("a"), Item("c")]


def test_one_appender_per_session_and_drop_rewrites_once(tmp_path, opened):
    path = tmp_path / "rows.jsonl"
    with RunStore.file(path, "--out") as store:
        for sample_id in "abcde":
            store.append(_row(sample_id))
        assert len(opened) == 1
        store.drop(["b", "d"])  # the file is replaced: the next row needs a new appender on it
        store.append(_row("f"))
    assert len(opened) == 2 and [r["id"] for r in read_jsonl(path)] == ["a", "c", "e", "f"]
    with pytest.raises(RuntimeError, match="only while the store is open"):
        store.append(_row("g"))


def test_the_lock_refuses_a_second_writer_naming_the_file_and_the_flag(tmp_path):
    path = tmp_path / "cache" / "seed-0.jsonl"
    with RunStore.file(path, "--cache"):
        with pytest.raises(RunLocked, match=r"seed-0\.jsonl is being written by pid \d+.*another --cache"):
            RunStore.file(path, "--cache").__enter__()
        RunStore.file(tmp_path / "cache" / "seed-1.jsonl", "--cache").__enter__().__exit__()  # its own lock
    with RunStore.run_folder(tmp_path / "run"):
        with pytest.raises(RunLocked, match=r"run is being written by pid \d+.*another --out\)$"):
            RunStore.run_folder(tmp_path / "run").__enter__()
    with RunStore.file(path, "--cache") as store:  # released on exit
        assert store.lock.held


def test_another_identity_is_refused_naming_the_difference(tmp_path):
    path = tmp_path / "rows.jsonl"
    options = {"manifest": tmp_path / "rows.manifest.json"}
    with RunStore.file(path, "--out", **options) as store:
        store.claim(A, lambda: {"identity": A.to_dict(), "fingerprint": A.fingerprint})
        store.save_manifest()
        store.append(_row("a"))
    with RunStore.file(path, "--out", **options) as store:
        with pytest.raises(RunConflict, match=r"rows\.jsonl holds a run of another identity .*judge\.seed: 0 -> 1\. "
                                              r"Use another --out, or delete that file to start over\.$"):
            store.claim(B, dict)
        assert store.claim(A, dict)["fingerprint"] == A.fingerprint  # the same identity resumes
    path.unlink()  # no finished rows: another identity starts afresh
    with RunStore.file(path, "--out", **options) as store:
        assert store.claim(B, lambda: {"fingerprint": B.fingerprint}) == {"fingerprint": B.fingerprint}


def test_rows_without_a_manifest_are_refused_or_kept_as_the_format_says(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "predictions.jsonl").write_text(json.dumps(Prediction("a", 1.0, 1.0, "ok").to_dict()) + "\n")
    with RunStore.run_folder(folder) as store, pytest.raises(RunConflict, match="holds predictions but no manifest"):
        store.claim(A, dict)
    path = tmp_path / "self_cot.jsonl"
    path.write_text(json.dumps(_row("a")) + "\n")  # written before self-CoTs had a manifest
    with RunStore.file(path, "--out", manifest=tmp_path / "m.json", unrecorded_ok=True) as store:
        store.claim(A, lambda: {"fingerprint": A.fingerprint})
        assert list(store.rows) == ["a"]


# -- the three users ------------------------------------------------------------------------------------------
def test_a_run_folder_writes_through_one_appender_per_session(tmp_path, vicuna, opened):  # noqa: F811
    from tract_eval.judges import build_judge
    from tract_eval.runner import run_benchmark

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_benchmark(build_judge("tract", backend=LengthBackend(crash_after=3)), vicuna, tmp_path, limit=6)
    result = run_benchmark(build_judge("tract", backend=LengthBackend()), vicuna, tmp_path, limit=6)
    assert (result.new_samples, result.reused_samples) == (3, 3) and len(opened) == 2
    assert (tmp_path / "tract" / "vicuna" / ".lock").is_file()


def test_the_scaling_cache_resumes_after_a_kill_locked_and_one_appender_per_fill(tmp_path, opened):
    from tract_eval.experiments.scaling import CotCache, fill_cache

    samples = [Item(f"s{i}") for i in range(4)]

    def generate(crash_after=None):
        def run(group, n_cot, first_cot, on_row):
            for done, sample in enumerate(group):
                if crash_after is not None and done == crash_after:
                    raise RuntimeError("killed")
                on_row(Prediction(sample.id, 1.0, None, "ok", per_cot=[float(first_cot + i) for i in range(n_cot)]))
        return run

    cache = CotCache(tmp_path, "j", "vicuna", 0)
    with pytest.raises(RuntimeError, match="killed"):
        fill_cache(cache, samples, 2, generate(crash_after=2))
    with open(cache.path, "a") as fh:
        fh.write('{"id": "s2", "gold"')  # and a torn line
    again = CotCache(tmp_path, "j", "vicuna", 0)
    assert [again.count(s.id) for s in samples] == [2, 2, 0, 0]
    with again.store, pytest.raises(RunLocked, match="another --cache"):  # a fill takes the file's lock
        fill_cache(CotCache(tmp_path, "j", "vicuna", 0), samples, 2, generate())
    assert fill_cache(again, samples, 3, generate()) == 2 * 3 + 2 * 1
    assert len(opened) == 2  # one per fill
    with again.store:  # a cache that holds every CoT asked for is only read: no lock, no appender
        assert fill_cache(again, samples, 3, generate()) == 0 and len(opened) == 2
    assert CotCache(tmp_path, "j", "vicuna", 0).per_cot == {s.id: [0.0, 1.0, 2.0] for s in samples}


@pytest.fixture()
def self_cot_rows(data_dir):
    from tract_eval.training.data import prepare

    return prepare([str(data_dir / "prometheus" / "vicuna_eval.json")], force_delimiter=True).rows[:5]


class CotBackend(LengthBackend):
    """CoTs that end with the delimiter, as a generating backend returns them (no readout bridge here)."""

    def _completion(self, prompt, index):
        done = super()._completion(prompt, index)
        done.text = done.text.rstrip()
        return done


def _judges_on(monkeypatch, backend):
    """Self-CoTs written by ``backend`` (no model is loaded); the judge is built as the pipeline builds it."""
    from tract_eval.judges import build_judge

    monkeypatch.setattr("tract_eval.training.pipeline.build_judge",
                        lambda name, **overrides: build_judge(name, backend=backend, **overrides))


def test_self_cots_resume_after_a_kill_and_refuse_another_judge(tmp_path, monkeypatch, self_cot_rows, opened):
    from tract_eval.models import EMBEDDED_NAME
    from tract_eval.training.pipeline import generate_self_cots

    out = tmp_path / "self_cot.jsonl"
    _judges_on(monkeypatch, CotBackend(crash_after=2))
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_self_cots(EMBEDDED_NAME, self_cot_rows, "tract", out, max_new_tokens=6)
    assert len(read_jsonl(out)) == 2
    backend = CotBackend()
    _judges_on(monkeypatch, backend)
    rows = generate_self_cots(EMBEDDED_NAME, self_cot_rows, "tract", out, max_new_tokens=6)
    assert backend.judged == 3 and [r.id for r in rows] == [r.id for r in self_cot_rows]
    assert all(r.cot.endswith("So the overall score is") and r.score == o.score for r, o in zip(rows, self_cot_rows))
    assert sorted(r["id"] for r in read_jsonl(out)) == sorted(r.id for r in self_cot_rows)  # each row once
    assert len(opened) == 2
    manifest = json.loads((tmp_path / "self_cot.manifest.json").read_text())
    assert manifest["identity"]["judge"]["sampling"]["max_new_tokens"] == 6
    more = self_cot_rows + [r.__class__(**{**r.to_dict(), "id": r.id + "-again"}) for r in self_cot_rows[:1]]
    with pytest.raises(RunConflict, match=r"self_cot\.jsonl holds a run of another identity .*max_new_tokens: 6 -> 8"):
        generate_self_cots(EMBEDDED_NAME, more, "tract", out, max_new_tokens=8)
    # a file written before self-CoTs had a manifest keeps working, and its judge is recorded from now on
    (tmp_path / "self_cot.manifest.json").unlink()
    assert len(generate_self_cots(EMBEDDED_NAME, more, "tract", out, max_new_tokens=8)) == 6
    assert json.loads((tmp_path / "self_cot.manifest.json").read_text())["fingerprint"] != manifest["fingerprint"]
