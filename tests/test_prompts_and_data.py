import json

import pytest

from tract_eval.benchmarks import DataFormatError, DataUnavailable, load_benchmark
from tract_eval.benchmarks.base import git_blob_id
from tract_eval.prompts import GradingFields, PromptFormatError, parse_prometheus_prompt, render_prompt


@pytest.mark.parametrize("name", ["vicuna_eval", "mt_bench_eval"])
def test_sections_round_trip_every_shared_prompt(data_dir, name):
    rows = json.loads((data_dir / "prometheus" / f"{name}.json").read_text())
    assert len(rows) == 320
    for row in rows:
        fields = parse_prometheus_prompt(row["instruction"])
        assert fields.reference_answer and fields.rubric.startswith("[")
        assert "###" not in fields.rubric
        assert render_prompt("prometheus_absolute", fields) == row["instruction"]


def test_sections_of_one_prompt(data_dir):
    row = json.loads((data_dir / "prometheus" / "vicuna_eval.json").read_text())[0]
    fields = parse_prometheus_prompt(row["instruction"])
    assert fields.instruction == "How can I improve my time management skills?"
    assert fields.response.startswith("Improving your time management skills")
    assert fields.reference_answer.startswith("To improve your time management skills")
    assert fields.rubric.splitlines()[1].startswith("Score 1:")
    assert fields.scale == (1, 5) and fields.feedback_label == "Feedback: "


def test_prompt_without_reference_and_other_scale():
    fields = GradingFields("Say hi.", "Hi!", "[Polite?]\nScore 1: no\nScore 2: yes", None, scale=(1, 2))
    text = render_prompt("prometheus_absolute", fields)
    assert "###Reference Answer" not in text and "between 1 and 2" in text
    assert parse_prometheus_prompt(text) == fields


@pytest.mark.parametrize("broken, problem", [
    ("no headings at all", "Task Description"),
    ("###Task Description:\nx\n\n###The instruction to evaluate:\nq\n\n###Score Rubrics:\nr\n\n###Feedback: ", "Response"),
    ("###Task Description:\nx\n\n###The instruction to evaluate:\nq\n\n###Response to evaluate:\na\n\n###Score Rubrics:\nr", "Feedback"),
])
def test_malformed_prompts_say_what_is_missing(broken, problem):
    with pytest.raises(PromptFormatError, match=problem):
        parse_prometheus_prompt(broken)


def test_gold_is_mean_of_gpt4_scores_and_checksums_verify(data_dir):
    bench = load_benchmark("vicuna", data_dir)
    raw = json.loads((data_dir / "prometheus" / "vicuna_eval.json").read_text())
    assert len(bench.samples) == 320
    for sample, row in zip(bench.samples, raw):
        assert sample.gold == pytest.approx(sum(row["gpt4_score"]) / len(row["gpt4_score"]))
    assert bench.located.checksums == {"vicuna_eval.json": "verified"}
    assert len({s.id for s in bench.samples}) == 320


def test_rewardbench_pairs_cover_sections_and_keep_ids_unique(data_dir):
    bench = load_benchmark("rewardbench", data_dir)
    assert len(bench.samples) == 2 * 2985
    assert len({s.id for s in bench.samples}) == len(bench.samples)  # id 3692 repeats across subsets
    first = bench.select(4)
    assert [s.meta["side"] for s in first] == ["chosen", "rejected"] * 4
    assert {s.meta["section"] for s in first} == {"Chat", "Chat Hard", "Reasoning", "Safety"}
    assert bench.select(8)[:8] == first  # a larger limit extends the same prefix


def test_hub_layout_and_malformed_rows_name_file_row_field(tmp_path):
    folder = tmp_path / "prometheus"
    folder.mkdir()
    good = {
        "orig_instruction": "Write a haiku about rain.", "orig_response": "Rain taps the window.",
        "orig_reference_answer": "Soft rain on the roof...", "orig_criteria": "Is it a haiku?",
        **{f"orig_score{i}_description": f"level {i}" for i in range(1, 6)}, "orig_score": "4",
    }
    (folder / "feedback_collection_ood_test.json").write_text(json.dumps([good, {**good, "orig_score": 3}]))
    bench = load_benchmark("feedback-bench", tmp_path)
    assert [s.gold for s in bench.samples] == [4.0, 3.0]
    assert bench.samples[0].fields.rubric == "[Is it a haiku?]\nScore 1: level 1\nScore 2: level 2\nScore 3: level 3\nScore 4: level 4\nScore 5: level 5"
    assert bench.located.checksums["feedback_collection_ood_test.json"].startswith("UNKNOWN VERSION")

    bad = dict(good)
    del bad["orig_response"]
    (folder / "feedback_collection_ood_test.json").write_text(json.dumps([good, bad]))
    with pytest.raises(DataFormatError, match=r"feedback_collection_ood_test.json: row 2: field 'orig_response'"):
        load_benchmark("feedback-bench", tmp_path)

    (folder / "feedback_collection_ood_test.json").write_text(json.dumps([{**good, "orig_score": "n/a"}]))
    with pytest.raises(DataFormatError, match=r"row 1: field 'gpt4_score/orig_score'|row 1: field 'orig_score'"):
        load_benchmark("feedback-bench", tmp_path)


def test_flask_rows_from_prometheus_format_and_jsonl(tmp_path, data_dir):
    # FLASK ships in the same pre-formatted layout; one JSON object per line is accepted too
    rows = json.loads((data_dir / "prometheus" / "mt_bench_eval.json").read_text())[:3]
    (tmp_path / "prometheus").mkdir()
    (tmp_path / "prometheus" / "flask_eval.json").write_text("\n".join(json.dumps(r) for r in rows))
    bench = load_benchmark("flask", tmp_path)
    assert [s.gold for s in bench.samples] == [pytest.approx(sum(r["gpt4_score"]) / 3) for r in rows]


def test_unavailable_data_is_reported_not_crashed(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("tract_eval.benchmarks.base.url_reachable", lambda url: False)
    with pytest.raises(DataUnavailable, match="Feedback Bench"):
        load_benchmark("feedback-bench", tmp_path)


def test_git_blob_id_matches_git():
    assert git_blob_id(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_unreachable_hub_model_fails_fast_with_a_clear_message(monkeypatch):
    import time

    from tract_eval.models import ModelUnavailable, resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ModelUnavailable, match="not in the Hugging Face cache"):
        resolve_model("some-org/not-cached-model")
    assert time.perf_counter() - started < 5
    with pytest.raises(ModelUnavailable, match="does not exist"):
        resolve_model("./no/such/model.gguf")


def test_ci_runs_the_readme_test_command():
    from conftest import REPO

    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    block = readme.split("## Tests", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0].strip()
    assert block and block in ci.splitlines()


@pytest.mark.parametrize("name, tract_blob, other_blob", [
    ("feedback-bench", "8ff621b0be2d01235596119f3d8d68b0a65b645c", "28919454bf5aba9e0c082a0171ee50ff278c5e18"),
    ("flask", "1b0517c770ac3f987acad6db8c721409aa9bfc6e", "0563a5769832269d52b8099406966fc127766b2f"),
])
def test_feedback_bench_and_flask_default_to_the_files_tract_evaluated(name, tract_blob, other_blob, tmp_path,
                                                                       monkeypatch, data_dir):
    from tract_eval.benchmarks import load_card
    from tract_eval.errors import UnknownNameError

    card = load_card(name)
    assert card.git_blobs == [tract_blob] and all("d223302/TRACT/dcb7a649" in u for u in card.urls)
    other = load_card(f"{name}@prometheus-eval")
    assert other.name == f"{name}@prometheus-eval" and other.git_blobs == [other_blob]
    assert all("prometheus-eval/prometheus-eval" in u for u in other.urls) and other.files == card.files
    with pytest.raises(UnknownNameError, match="known: tract, prometheus-eval"):
        load_card(f"{name}@v9")
    # a local file of the other version is refused, naming the version to ask for
    rows = json.loads((data_dir / "prometheus" / "mt_bench_eval.json").read_text())[:2]
    (tmp_path / card.files[0]).parent.mkdir(parents=True)
    (tmp_path / card.files[0]).write_text(json.dumps(rows))
    blob = git_blob_id((tmp_path / card.files[0]).read_bytes())
    monkeypatch.setattr(type(card), "known_versions", lambda self: {"tract": [tract_blob], "prometheus-eval": [blob]})
    with pytest.raises(DataFormatError, match=f"is the 'prometheus-eval' version.*--bench {name}@prometheus-eval"):
        load_benchmark(name, tmp_path)
