"""Stored runs read back as typed objects: rows as Prediction, manifest and metrics typed."""
import json

import pytest

from tract_eval.records import (CorruptPredictions, Manifest, Metrics, PairMeta, Prediction, RunFormatError,
                                read_manifest, read_metrics, read_predictions)


def _write(path, *lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _row(**fields):
    return json.dumps({"id": "a", "gold": 3.0, "prediction": 2.5, "status": "ok", **fields})


def test_rows_read_back_as_predictions_with_what_readers_need(tmp_path):
    pair = {"pair_id": "chat/1", "side": "chosen", "subset": "chat", "section": "Chat"}
    path = _write(tmp_path / "p.jsonl", _row(), "", _row(id="b", status="fallback", meta=pair),
                  _row(id="c", prediction=None, status="parse_failure"))
    rows = read_predictions(path)
    assert all(isinstance(r, Prediction) for r in rows)
    assert [r.failed for r in rows] == [False, True, True]
    assert [r.scored for r in rows] == [True, True, False]
    assert rows[0].pair is None and rows[0].key == "a"
    assert rows[1].pair == PairMeta(pair_id="chat/1", side="chosen", subset="chat", section="Chat")
    assert rows[1].key == "chat/b/chosen"


@pytest.mark.parametrize("line, complaint", [
    ("{}", "line 2 has no field 'id'"),
    ("[1]", "line 2 is a JSON list, not an object"),
    (_row(prediction="abc"), "line 2 field 'prediction' must be a number or null"),
    (_row(gold=True), "line 2 field 'gold' must be a number or null"),
    (_row(status="great"), "line 2 field 'status' must be one of ok, parse_failure"),
    (_row(per_cot=["x"]), "line 2 field 'per_cot' must be a list of numbers or nulls"),
    (_row(meta={"side": "chosen"}), "line 2 meta names a side but lacks pair_id, subset, section"),
])
def test_a_line_that_is_json_but_not_a_row_names_file_line_and_field(tmp_path, line, complaint):
    path = _write(tmp_path / "p.jsonl", _row(), line, _row(id="z"))
    with pytest.raises(CorruptPredictions) as caught:
        read_predictions(path)
    assert str(caught.value).startswith(f"{path}: {complaint}")


def test_manifest_and_metrics_read_back_typed(tmp_path):
    manifest = {"fingerprint": "f00", "identity": {"model": {"model": "m"}}, "judge": {"name": "rail", "scale": [1, 5]},
                "bench": {"kind": "pairwise", "options": {"unparsed_pairs": "exclude"}}, "seed": 3,
                "sessions": [{"started": "t"}], "extra": 1}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    read = read_manifest(tmp_path / "manifest.json")
    assert isinstance(read, Manifest) and read.fingerprint == "f00" and read.seed == 3
    assert read.bench_kind == "pairwise" and read.scale == (1, 5)
    assert read.bench_options == {"unparsed_pairs": "exclude"} and read.raw["extra"] == 1
    (tmp_path / "metrics.json").write_text(json.dumps({"n": 4, "pearson": 0.5, "statuses": {"ok": 4}}))
    metrics = read_metrics(tmp_path / "metrics.json")
    assert isinstance(metrics, Metrics) and (metrics.n, metrics.pearson, metrics.statuses) == (4, 0.5, {"ok": 4})
    assert read_manifest(tmp_path / "absent.json") is None


@pytest.mark.parametrize("text, complaint", [("[]", "holds a JSON list, not an object"), ("{", "not valid JSON"),
                                             ('{"judge": 3}', "field 'judge' must be an object")])
def test_a_manifest_of_another_shape_names_the_file(tmp_path, text, complaint):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(RunFormatError, match=complaint) as caught:
        read_manifest(tmp_path / "manifest.json")
    assert str(tmp_path / "manifest.json") in str(caught.value)
