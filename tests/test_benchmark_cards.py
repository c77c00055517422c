"""A user's own pairwise benchmark card: its sections, their order and weights reach the metrics and reports."""
import json

import pytest

from test_runner import LengthBackend
from tract_eval.benchmarks import load_benchmark, load_card
from tract_eval.cards import _user_dirs, add_card_dir
from tract_eval.errors import ConfigError
from tract_eval.judges import build_judge
from tract_eval.metrics import LEADERBOARD
from tract_eval.reports.runs import collect_runs
from tract_eval.reports.table import Column, build_table
from tract_eval.runner import run_benchmark

# sections named so that their card order (Zeta first) is not their alphabetical order
CARD = """title: My Pairs
kind: pairwise
loader: rewardbench
files: [pairs.jsonl]
options:
  rubric: "[Is the response better?]"
  sections: {z1: Zeta, a1: Alpha, a2: Alpha}
"""
PAIRS = [  # a1 has three pairs, a2 one: without subset_weights a section weighs subsets by their pairs
    {"id": 1, "subset": "z1", "prompt": "p1", "chosen": "a", "rejected": "bb"},
    {"id": 2, "subset": "a1", "prompt": "p2", "chosen": "ccc", "rejected": "d"},
    {"id": 3, "subset": "a1", "prompt": "p3", "chosen": "e", "rejected": "ffff"},
    {"id": 4, "subset": "a1", "prompt": "p4", "chosen": "gg", "rejected": "hhhhh"},
    {"id": 5, "subset": "a2", "prompt": "p5", "chosen": "ii", "rejected": "j"},
]


@pytest.fixture
def cards(tmp_path):
    folder = tmp_path / "cards"
    folder.mkdir()
    (folder / "my-pairs.yaml").write_text(CARD)
    (folder / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    add_card_dir(folder)
    yield folder
    _user_dirs.clear()


def test_a_user_pairwise_card_scores_and_reports_by_its_own_sections(tmp_path, cards):
    bench = load_benchmark("my-pairs")
    scheme = bench.section_scheme()
    assert list(scheme.sections) == ["Zeta", "Alpha"] and scheme.weights == {"z1": 1, "a1": 3, "a2": 1}
    result = run_benchmark(build_judge("tract", backend=LengthBackend()), bench, tmp_path / "runs")
    metrics = result.metrics
    subsets = {name: s["accuracy"] for name, s in metrics["subsets"].items()}
    alpha = (3 * subsets["a1"] + 1 * subsets["a2"]) / 4
    assert metrics["sections"]["Alpha"]["accuracy"] == pytest.approx(alpha)
    assert metrics["score"] == pytest.approx((subsets["z1"] + alpha) / 2)

    _user_dirs.clear()  # the report reads the sections from the run's manifest, not from the card folder
    table = build_table(collect_runs([tmp_path / "runs"]), ["r"])
    assert [c.measure for c in table.columns] == ["Zeta", "Alpha", LEADERBOARD]
    cell = lambda m: table.cells["tract", Column("my-pairs", m, accuracy=True)].estimate.value  # noqa: E731
    assert cell("Alpha") == pytest.approx(alpha) and cell(LEADERBOARD) == pytest.approx(metrics["score"])


def test_pairwise_card_mistakes_are_named_before_any_model_loads(cards):
    (cards / "bad-weights.yaml").write_text(CARD + "subset_weights: {z1: 1, a1: 2}\n")
    with pytest.raises(ConfigError, match=r"bad-weights.yaml: subset_weights and options.sections name other "
                                          r"subsets \(weights only: \[\]; sections only: \['a2'\]\)"):
        load_card("bad-weights")
    (cards / "no-rubric.yaml").write_text(CARD.replace('  rubric: "[Is the response better?]"\n', ""))
    with pytest.raises(ConfigError, match=r"no-rubric.yaml: options.rubric: a pairwise card needs the rubric"):
        load_benchmark("no-rubric")
    (cards / "table-pairs.yaml").write_text("title: T\nkind: pairwise\nloader: table\nfiles: [t.jsonl]\n")
    (cards / "t.jsonl").write_text('{"instruction": "i", "response": "r", "rubric": "c"}\n')
    with pytest.raises(ConfigError, match=r"table-pairs.yaml: a pairwise benchmark's loader gives every sample "
                                          r"the meta pair_id, section, side, subset; loader 'table' gave \['row'\]"):
        load_benchmark("table-pairs")


def test_annotation_cots_come_from_the_fields_the_card_names(data_dir, capsys):
    from tract_eval.experiments.analysis import annotation_cots
    from tract_eval.experiments.cli import _load_benches

    vicuna = load_benchmark("vicuna", data_dir)
    assert load_card("vicuna").annotation_cots == ["gpt4_feedback", "gpt4_score"]
    assert len(annotation_cots(vicuna)) == 3 * len(vicuna.samples)
    # cot-shift's default: the benchmarks whose card names annotation CoTs (and whose data is here)
    assert sorted(b.name for b in _load_benches("all", data_dir, annotated=True)) == ["mt-bench", "vicuna"]
    rewardbench = load_benchmark("rewardbench", data_dir)
    with pytest.raises(ConfigError, match="rewardbench: its card names no annotation_cots fields"):
        annotation_cots(rewardbench)


def _shard_and_merge(bench, out, capsys, *merge_flags, limit=None, edit_manifest=None):
    """Judge ``bench`` in two shards, merge them with ``tract-eval merge`` (which reloads the benchmark from
    the shards' manifest) and return the merged metrics and those of one unsharded run."""
    from tract_eval.cli import main

    for i in range(2):
        run_benchmark(build_judge("tract", backend=LengthBackend()), bench, out / "sharded", shard=(i, 2),
                      limit=limit)
    for path in (out / "sharded" / "tract" / bench.name / "shards").glob("*/manifest.json"):
        if edit_manifest:
            path.write_text(json.dumps(edit_manifest(json.loads(path.read_text()))))
    capsys.readouterr()
    assert main(["merge", str(out / "sharded" / "tract" / bench.name), *merge_flags]) == 0
    merged = json.loads(capsys.readouterr().out)
    whole = run_benchmark(build_judge("tract", backend=LengthBackend()), bench, out / "whole", limit=limit).metrics
    return merged, whole


def test_merge_reloads_own_data_from_the_shards_manifest(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data" / "answers.csv"
    data.parent.mkdir()
    data.write_text("question,answer,criteria,label\nQ1,a,C,4\nQ2,bbb,C,2\nQ3,cc,C,5\nQ4,dddd,C,1\n")
    bench = load_benchmark(str(data), columns="instruction=question,response=answer,rubric=criteria,score=label",
                           scale="1-5", drop_reference=True)
    monkeypatch.chdir(tmp_path)  # merge runs elsewhere: nothing is found by the folder name "answers"
    merged, whole = _shard_and_merge(bench, tmp_path / "runs", capsys)
    assert merged["n"] == 4 and merged["pearson"] == pytest.approx(whole["pearson"])


def test_merge_reloads_a_cards_folder_benchmark_without_the_folder(tmp_path, cards, capsys):
    bench = load_benchmark("my-pairs")
    _user_dirs.clear()  # `tract-eval merge` is given no --cards: the manifest holds the card's path
    merged, whole = _shard_and_merge(bench, tmp_path / "runs", capsys)
    assert merged["n_pairs"] == 5 and merged["score"] == pytest.approx(whole["score"])
    assert list(merged["sections"]) == ["Zeta", "Alpha"]


JUDGE_CARD = "judge_class: tract\nprotocol: cot-rail\ntemplate: {template}\n"


def test_a_judge_card_in_a_cards_folder_finds_the_template_next_to_it(tmp_path):
    from tract_eval.judges import load_judge_card
    from tract_eval.prompts import GradingFields, render_prompt

    folder = tmp_path / "cards"
    (folder / "judges").mkdir(parents=True)
    (folder / "judges" / "terse.yaml").write_text(JUDGE_CARD.format(template="terse"))
    (folder / "judges" / "terse.j2").write_text("Grade {{ response }} for {{ instruction }} ({{ low }}-{{ high }})")
    (folder / "judges" / "gone.yaml").write_text(JUDGE_CARD.format(template="missing_one"))
    add_card_dir(folder)
    try:
        config = load_judge_card("terse")
        assert config.template == str((folder / "judges" / "terse.j2").resolve())
        fields = GradingFields("Say hi.", "hi", "[Polite?]")
        assert render_prompt(config.template, fields) == "Grade hi for Say hi. (1-5)"
        _user_dirs.clear()  # resolved when the card was read: rendering needs no --cards folder any more
        assert render_prompt(config.template, fields) == "Grade hi for Say hi. (1-5)"
        add_card_dir(folder)
        with pytest.raises(ConfigError, match=r"gone.yaml: template 'missing_one' not found \(looked for "
                                              r"missing_one.j2 in .*judges/templates\)"):
            load_judge_card("gone")
        assert load_judge_card("tract").template == "prometheus_absolute"  # built-in cards keep the name
    finally:
        _user_dirs.clear()


def test_a_missing_judge_template_is_a_one_line_cli_error(tmp_path, capsys):
    from tract_eval.cli import main

    card = tmp_path / "mine.yaml"
    card.write_text(JUDGE_CARD.format(template="nowhere"))
    assert main(["run", "--judge", str(card), "--bench", "vicuna", "--limit", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tract-eval run: error: {card}: template 'nowhere' not found") and "\n" not in err


def test_report_takes_titles_and_order_from_a_cards_folder(tmp_path, cards, capsys):
    from tract_eval.cli import main

    run_benchmark(build_judge("tract", backend=LengthBackend()), load_benchmark("my-pairs"), tmp_path / "runs")
    _user_dirs.clear()
    capsys.readouterr()
    assert main(["report", str(tmp_path / "runs"), "--format", "markdown"]) == 0
    plain = capsys.readouterr().out.splitlines()[0]
    assert main(["report", str(tmp_path / "runs"), "--cards", str(cards)]) == 0
    titled = capsys.readouterr().out.splitlines()[0]
    assert "my-pairs Zeta" in plain and "My Pairs Zeta" in titled and titled.index("Zeta") < titled.index("Alpha")


def test_merge_of_a_builtin_benchmark_also_from_manifests_that_predate_the_load_entry(tmp_path, data_dir, capsys):
    bench = load_benchmark("vicuna", data_dir)
    merged, whole = _shard_and_merge(bench, tmp_path / "new", capsys, "--data-dir", str(data_dir), limit=6)
    assert merged["n"] == 6 and merged["pearson"] == pytest.approx(whole["pearson"])

    def without_load(manifest):  # an older manifest: the benchmark is found by the run folder's name
        del manifest["bench"]["load"]
        return manifest

    merged, _ = _shard_and_merge(bench, tmp_path / "old", capsys, "--data-dir", str(data_dir), limit=6,
                                 edit_manifest=without_load)
    assert merged["n"] == 6
