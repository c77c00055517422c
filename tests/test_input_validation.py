"""Bad input is refused before any model loads, naming the file, row or field (issue 11 probes)."""
import json
import shutil

import pytest

from tract_eval.benchmarks import DataFormatError, load_benchmark
from tract_eval.judges import build_judge
from tract_eval.records import read_predictions
from tract_eval.runner import ConfigError, run_benchmark

from test_runner import LengthBackend


def copy_prometheus(tmp_path, data_dir):
    folder = tmp_path / "data"
    shutil.copytree(data_dir / "prometheus", folder / "prometheus")
    return folder


@pytest.mark.parametrize("gold", [True, [4, False], [4, None], [3, "x"], {"a": 1}])
def test_gold_must_be_numbers(tmp_path, data_dir, gold):
    folder = copy_prometheus(tmp_path, data_dir)
    path = folder / "prometheus" / "vicuna_eval.json"
    rows = json.loads(path.read_text())
    rows[2]["gpt4_score"] = gold
    path.write_text(json.dumps(rows))
    with pytest.raises(DataFormatError, match=r"vicuna_eval\.json: row 3: field 'gpt4_score'"):
        load_benchmark("vicuna", folder)


def test_gold_outside_the_scale_is_refused_before_the_model_loads(tmp_path, data_dir):
    folder = copy_prometheus(tmp_path, data_dir)
    path = folder / "prometheus" / "vicuna_eval.json"
    rows = json.loads(path.read_text())
    rows[4]["gpt4_score"] = [50, 50, 50]
    path.write_text(json.dumps(rows))
    backend = LengthBackend()
    with pytest.raises(DataFormatError, match=r"row 5: field 'gold': .*gold 50 is outside the judge's scale \[1, 5\]"):
        run_benchmark(build_judge("tract", backend=backend), load_benchmark("vicuna", folder), tmp_path / "runs", limit=1)
    assert backend.judged == 0 and not (tmp_path / "runs").exists()


def test_an_empty_rewardbench_section_is_named(tmp_path, data_dir):
    folder = tmp_path / "data"
    shutil.copytree(data_dir / "rewardbench", folder / "rewardbench")
    (folder / "rewardbench" / "Safety.jsonl").write_text("")
    with pytest.raises(DataFormatError, match=r"no pairs for RewardBench section\(s\) Safety"):
        load_benchmark("rewardbench", folder)


def test_non_utf8_data_names_file_and_position(tmp_path, data_dir):
    folder = copy_prometheus(tmp_path, data_dir)
    path = folder / "prometheus" / "vicuna_eval.json"
    data = path.read_bytes()
    cut = data.index(b"\n", 1000) + 5
    path.write_bytes(data[:cut] + b"\xff\xfe" + data[cut:])
    line = data[:cut].count(b"\n") + 1
    with pytest.raises(DataFormatError, match=rf"vicuna_eval\.json: not UTF-8 at byte {cut} \(line {line}\)"):
        load_benchmark("vicuna", folder)


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/b", "..", ".hidden", "x y"])
def test_names_in_paths_are_plain(tmp_path, data_dir, name):
    judge = build_judge("tract", backend=LengthBackend())
    object.__setattr__(judge.config, "name", name)  # past build_judge: the runner's own check is tested
    with pytest.raises(ConfigError, match="cannot be a folder name"):
        run_benchmark(judge, load_benchmark("vicuna", data_dir), tmp_path / "out", limit=1)
    assert not any(tmp_path.rglob("predictions.jsonl"))


def test_a_card_file_named_by_path_gets_its_plain_stem(tmp_path, data_dir):
    card = tmp_path / "my-judge.yaml"
    card.write_text("protocol: cot-rail\n")
    result = run_benchmark(build_judge(str(card), backend=LengthBackend()), load_benchmark("vicuna", data_dir),
                           tmp_path / "out", limit=1)
    assert result.out_dir == tmp_path / "out" / "my-judge" / "vicuna"


class ShortContext(LengthBackend):
    def __init__(self, context):
        super().__init__()
        self.context = context

    def context_length(self):
        return self.context


def test_too_long_prompts_are_marked_or_refused(tmp_path, data_dir):
    vicuna = load_benchmark("vicuna", data_dir)
    judge = build_judge("tract", backend=ShortContext(10), max_new_tokens=4)
    lengths = {s.id: judge.backend.count_tokens(judge.build_input(s)) for s in vicuna.select(4)}
    # a context that fits exactly the shortest prompt + its budget (4 new tokens + delimiter + score)
    budget = 4 + len(judge.candidates.delimiter_ids) + len(judge.candidates.bridge_ids) + 1
    context = min(lengths.values()) + budget
    backend = ShortContext(context)
    result = run_benchmark(build_judge("tract", backend=backend, max_new_tokens=4), vicuna, tmp_path / "a", limit=4)
    rows = read_predictions(result.out_dir / "predictions.jsonl")
    too_long = {r.id for r in rows if r.status == "too_long"}
    assert too_long == {i for i, n in lengths.items() if n + budget > context} and too_long
    assert all(r.prediction is None and r.meta["context_length"] == context for r in rows if r.id in too_long)
    assert backend.judged == 4 - len(too_long)
    assert result.metrics["statuses"]["too_long"] == len(too_long)
    assert result.metrics["n"] == 4 - len(too_long)
    with pytest.raises(ConfigError, match=rf"exceed the model's context of {context}"):
        run_benchmark(build_judge("tract", backend=ShortContext(context), max_new_tokens=4), vicuna, tmp_path / "b",
                      limit=4, too_long="refuse")
