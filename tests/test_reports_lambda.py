import json

import pytest

from tract_eval.cli import main


def _run(out, judge, model, bench, gold, pred):
    folder = out / judge / bench
    folder.mkdir(parents=True)
    rows = [{"id": str(i), "gold": g, "prediction": p, "status": "ok", "meta": {}} for i, (g, p) in enumerate(zip(gold, pred))]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "manifest.json").write_text(json.dumps({"judge": {"name": judge, "model": str(model)}}))


def _model(tmp_path, weight):
    folder = tmp_path / "models" / f"lambda-{weight:g}"
    folder.mkdir(parents=True)
    (folder / "training_summary.json").write_text(json.dumps({"score_weight": weight}))
    return folder


def test_lambda_sweep_reads_weights_and_averages_pearson(tmp_path):
    runs = tmp_path / "runs"
    gold = [1, 2, 3, 4, 5]
    _run(runs, "cot-raft-l0.5", _model(tmp_path, 0.5), "vicuna", gold, [1, 2, 3, 5, 4])
    _run(runs, "cot-raft-l0.5", tmp_path / "models" / "lambda-0.5", "mt-bench", gold, [2, 1, 3, 4, 5])
    _run(runs, "cot-raft-l2", _model(tmp_path, 2.0), "vicuna", gold, [1, 2, 3, 4, 5])
    _run(runs, "cot-raft-l2", tmp_path / "models" / "lambda-2", "mt-bench", gold, [1, 2, 3, 4, 5])
    out = tmp_path / "fig"
    assert main(["lambda-sweep", str(runs), "--out", str(out)]) == 0
    data = json.loads((out / "lambda_sweep.json").read_text())
    assert [p["lambda"] for p in data] == [0.5, 2.0]
    assert data[0]["average"] == pytest.approx((0.9 + 0.9) / 2)
    assert data[1]["average"] == pytest.approx(1.0)
    assert (out / "lambda_sweep.png").stat().st_size > 1000 and (out / "lambda_sweep.svg").is_file()


def test_runs_without_a_trained_model_are_refused_by_name(tmp_path, capsys):
    runs = tmp_path / "runs"
    _run(runs, "tract", tmp_path / "not-trained", "vicuna", [1, 2, 3], [1, 2, 3])
    assert main(["lambda-sweep", str(runs), "--out", str(tmp_path / "fig")]) == 2
    assert "training_summary.json" in capsys.readouterr().err
