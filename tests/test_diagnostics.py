"""``tract-eval diagnose``: every number computed by hand on small hand-made distributions (binary-exact
probabilities, so the hand arithmetic is exact), α and κ against the packages' own results, and the
command's files, formats and one-line errors. No model is loaded."""
from __future__ import annotations

import json
import math
from pathlib import Path

import krippendorff
import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.metrics import cohen_kappa_score

import tract_eval
from tract_eval.cli import main
from tract_eval.reports.diagnostics import diagnose_run, write_diagnostics
from tract_eval.reports.runs import load_run

TOL = 1e-12


def _row(row_id, gold, prediction, status="ok", cots=(), raw=(), chars=None, **extra) -> dict:
    meta = dict(extra.pop("meta", {}))
    if chars is not None:
        meta["response_chars"] = chars
    return {"id": row_id, "gold": gold, "prediction": prediction, "status": status,
            "per_cot": extra.pop("per_cot", [prediction]), "score_probs": list(cots), "raw_probs": list(raw), "meta": meta, **extra}


def _probs(values: list[float], low: int = 1) -> dict[str, float]:
    return {str(low + i): v for i, v in enumerate(values)}


def _scaled(values: list[float], mass: float, low: int = 1) -> dict[str, float]:
    return {str(low + i): v * mass for i, v in enumerate(values)}


def write_run(out: Path, judge: str, bench: str, rows: list[dict], scale=(1, 5), kind="absolute",
              results: dict | None = None) -> Path:
    folder = out / judge / bench
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = {"judge": {"name": judge}, "bench": {"name": bench, "kind": kind, "scale": list(scale)}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "metrics.json").write_text(json.dumps({"judge": judge}))
    if results is not None:
        (folder / "results.json").write_text(json.dumps(results))
    return folder


# The hand-made 1-5 run. Distributions (scores 1..5):
P_A = [0.5, 0.25, 0.125, 0.125, 0.0]        # gold 2.0 (y 2); mode 1: wrong; confidence 0.5
P_B = [0.0, 0.375, 0.375, 0.25, 0.0]        # gold 3.5 (y 4, half up); tie 2/3 -> mode 2: wrong; conf 0.375
P_C = [0.0, 0.0, 0.0, 0.0, 1.0]             # gold 4.67 (y 5): all mass on one point; right; conf 1.0
P_F = [0.125, 0.125, 0.375, 0.375, 0.0]     # mean of two CoTs; gold 1.5 (y 2); tie 3/4 -> mode 3: wrong
P_G = [0.375, 0.25, 0.25, 0.125, 0.0]       # gold 1.0 (y 1); mode 1: right; conf 0.375


def absolute_rows() -> list[dict]:
    cot_f1 = {"1": 0.5, "2": 0.5, "3": 0.5, "4": 0.5}  # sums to 2: renormalised to 0.25 each
    cot_f2 = {"3": 0.5, "4": 0.5, "6": 0.5}  # "6" is off the 1-5 scale: renormalised over the scale
    return [
        _row("A", 2.0, 1.875, cots=[_probs(P_A)], raw=[{**_scaled(P_A, 0.5), "0": 0.25}], chars=100,
             prompt_tokens=10, generated_tokens=4, seconds=1.0),
        _row("B", 3.5, 2.875, cots=[_probs(P_B)], raw=[_scaled(P_B, 0.8)], chars=300,
             prompt_tokens=20, generated_tokens=6, seconds=2.0),
        _row("C", 4.67, 5.0, cots=[_probs(P_C)], raw=[_scaled(P_C, 1.0)], chars=50,
             prompt_tokens=30, generated_tokens=2, seconds=0.5),
        _row("D", 3.0, None, status="parse_failure", per_cot=[None], chars=120,
             prompt_tokens=40, generated_tokens=8, seconds=1.5),  # a failed row
        _row("E", 4.0, 4.0, chars=200, prompt_tokens=50, generated_tokens=3, seconds=1.0),  # no distribution
        _row("F", 1.5, 3.0, cots=[cot_f1, cot_f2], raw=[_scaled([0.25] * 4 + [0], 0.4), _scaled([0, 0, .5, .5, 0], 0.6)],
             per_cot=[2.5, 3.5], chars=400, prompt_tokens=60, generated_tokens=10, seconds=3.0),
        _row("G", 1.0, 2.125, cots=[_probs(P_G)], raw=[_scaled(P_G, 0.25)], chars=250,
             prompt_tokens=70, generated_tokens=5, seconds=2.5),
        _row("H", 5.0, 1.0, status="fallback", chars=80, prompt_tokens=80, generated_tokens=7, seconds=0.5),
        _row("I", 2.0, None, status="too_long", per_cot=[], prompt_tokens=5000, generated_tokens=0, seconds=0.0),
    ]


@pytest.fixture()
def absolute(tmp_path) -> dict:
    return diagnose_run(load_run(write_run(tmp_path, "judge", "own", absolute_rows())))


def _pearson(x, y) -> float:
    return float(np.corrcoef(np.asarray(x, float), np.asarray(y, float))[0, 1])


def _spearman(x, y) -> float:
    return _pearson(rankdata(x), rankdata(y))


def test_calibration_by_hand(absolute):
    cal = absolute["calibration"]
    assert cal["n"] == 5 and cal["left_out"] == {"fallback": 1, "no distribution": 1, "parse_failure": 1,
                                                   "too_long": 1}
    # bins: 3 holds B, F (wrong) and G (right) at 0.375; 5 holds A (wrong) at 0.5; 9 holds C (right) at 1.0
    counts = [b["count"] for b in cal["bins"]]
    assert counts == [0, 0, 0, 3, 0, 1, 0, 0, 0, 1]
    assert cal["bins"][3]["confidence"] == pytest.approx(0.375, abs=TOL)
    assert cal["bins"][3]["accuracy"] == pytest.approx(1 / 3, abs=TOL)
    assert cal["bins"][9] == {"low": 0.9, "high": 1.0, "count": 1, "confidence": 1.0, "accuracy": 1.0}
    assert cal["bins"][0]["confidence"] is None and cal["bins"][0]["accuracy"] is None
    assert cal["ece"] == pytest.approx(3 / 5 * abs(1 / 3 - 0.375) + 1 / 5 * 0.5 + 1 / 5 * 0, abs=TOL)
    assert cal["accuracy"] == pytest.approx(2 / 5, abs=TOL)
    brier = [0.25 + 0.5625 + 0.015625 + 0.015625,        # A against y=2
             0.140625 + 0.140625 + 0.5625,               # B against y=4
             0.0,                                        # C: all mass on y=5
             0.015625 + 0.765625 + 0.140625 + 0.140625,  # F against y=2
             0.390625 + 0.0625 + 0.0625 + 0.015625]      # G against y=1
    assert cal["brier"] == pytest.approx(sum(brier) / 5, abs=TOL)
    nll = [-math.log(0.25), -math.log(0.25), 0.0, -math.log(0.125), -math.log(0.375)]
    assert cal["nll"] == pytest.approx(sum(nll) / 5, abs=TOL)
    # CRPS: on [k, k+1) F is F(k); the indicator 1[x >= g] switches at g
    crps = [0.25 + 0.0625 + 0.015625,                    # A, F = .5 .75 .875 1, g = 2
            0.140625 + (0.5625 + 0.0625) / 2,            # B, F = 0 .375 .75 1, g = 3.5 splits [3, 4)
            (5 - 4.67) * 1.0,                            # C, F = 0 0 0 0, g = 4.67 splits [4, 5)
            (0.015625 + 0.765625) / 2 + 0.5625 + 0.140625,  # F, F = .125 .25 .625 1, g = 1.5 splits [1, 2)
            0.390625 + 0.140625 + 0.015625]              # G, F = .375 .625 .875 1, g = 1
    assert cal["crps"] == pytest.approx(sum(crps) / 5, abs=TOL)
    # [q(.25), q(.75)]: A [1,2] in, B [2,3] out, C [5,5] out, F [2,4] out (F(2) = .25 exactly), G [1,3] in
    assert cal["coverage"]["0.5"] == pytest.approx(2 / 5, abs=TOL)
    # [q(.1), q(.9)] and [q(.05), q(.95)]: A [1,4], B [2,4], F [1,4], G [1,4] hold their gold; C [5,5] does not
    assert cal["coverage"]["0.8"] == pytest.approx(4 / 5, abs=TOL)
    assert cal["coverage"]["0.9"] == pytest.approx(4 / 5, abs=TOL)


def test_readouts_distribution_by_hand(absolute):
    gold = [2.0, 3.5, 4.67, 1.5, 1.0]
    means = [0.5 + 0.5 + 0.375 + 0.5, 0.75 + 1.125 + 1.0, 5.0, 0.125 + 0.25 + 1.125 + 1.5, 0.375 + 0.5 + 0.75 + 0.5]
    modes = [1, 2, 5, 3, 1]  # ties to the lower score (B: 2 over 3, F: 3 over 4)
    medians = [1, 3, 5, 3, 2]
    out = absolute["readouts"]
    assert out["n"] == 5
    for name, values in (("mean", means), ("mode", modes), ("median", medians)):
        assert out[name]["pearson"] == pytest.approx(_pearson(gold, values), abs=TOL)
        assert out[name]["spearman"] == pytest.approx(_spearman(gold, values), abs=TOL)
    ln = math.log
    entropies = [1.75 * ln(2), -(0.75 * ln(0.375) + 0.25 * ln(0.25)), 0.0,
                 -(0.25 * ln(0.125) + 0.75 * ln(0.375)), -(0.375 * ln(0.375) + 0.5 * ln(0.25) + 0.125 * ln(0.125))]
    dist = absolute["distribution"]
    assert dist["n"] == 5 and dist["without"] == 4
    assert dist["entropy"] == pytest.approx(sum(entropies) / 5, abs=TOL)
    # raw mass on the scale's points only (A's "0" is not a candidate); F: mean of its CoTs' 0.4 and 0.6
    assert dist["candidate_mass"] == pytest.approx((0.5 + 0.8 + 1.0 + 0.5 + 0.25) / 5, abs=TOL)


KEPT_GOLD = [2.0, 3.5, 4.67, 4.0, 1.5, 1.0]  # A B C E F G: the rows with a score of their own
KEPT_PRED = [1.875, 2.875, 5.0, 4.0, 3.0, 2.125]


def test_failures_by_hand(absolute):
    fail = absolute["failures"]
    assert fail["statuses"] == {"fallback": 1, "ok": 6, "parse_failure": 1, "too_long": 1}
    assert fail["failed"] == 3
    excluded = fail["excluded"]
    assert excluded["n"] == 6
    assert excluded["pearson"] == pytest.approx(_pearson(KEPT_GOLD, KEPT_PRED), abs=TOL)
    assert excluded["spearman"] == pytest.approx(_spearman(KEPT_GOLD, KEPT_PRED), abs=TOL)
    diffs = np.subtract(KEPT_PRED, KEPT_GOLD)
    assert excluded["rmse"] == pytest.approx(math.sqrt(sum(d * d for d in diffs) / 6), abs=TOL)
    # D (parse failure), H (fallback 1.0) and I (too long) scored at the 1-5 midpoint 3
    gold = [2.0, 3.5, 4.67, 3.0, 4.0, 1.5, 1.0, 5.0, 2.0]
    pred = [1.875, 2.875, 5.0, 3.0, 4.0, 3.0, 2.125, 3.0, 3.0]
    mid = fail["at_midpoint"]
    assert mid["midpoint"] == 3.0 and mid["n"] == 9
    assert mid["pearson"] == pytest.approx(_pearson(gold, pred), abs=TOL)
    assert mid["spearman"] == pytest.approx(_spearman(gold, pred), abs=TOL)
    assert mid["rmse"] == pytest.approx(math.sqrt(sum((p - g) ** 2 for p, g in zip(pred, gold)) / 9), abs=TOL)


def test_agreement_matches_the_packages(absolute):
    agree = absolute["agreement"]
    assert agree["n"] == 6
    assert agree["krippendorff_alpha_interval"] == pytest.approx(
        krippendorff.alpha(reliability_data=[KEPT_PRED, KEPT_GOLD], level_of_measurement="interval"), abs=TOL)
    pred_r, gold_r = [2, 3, 5, 4, 3, 2], [2, 4, 5, 4, 2, 1]  # half up: 2.875 -> 3, 3.5 -> 4, 1.5 -> 2
    assert agree["krippendorff_alpha_ordinal"] == pytest.approx(
        krippendorff.alpha(reliability_data=[pred_r, gold_r], level_of_measurement="ordinal",
                           value_domain=[1, 2, 3, 4, 5]), abs=TOL)
    assert agree["weighted_kappa"] == pytest.approx(
        cohen_kappa_score(gold_r, pred_r, labels=[1, 2, 3, 4, 5], weights="quadratic"), abs=TOL)
    assert "within_judge_cots_alpha_interval" in agree  # F has two CoTs: n_cot 2
    per_cot = [[1.875, 2.875, 5.0, np.nan, 4.0, 2.5, 2.125, 1.0, np.nan], [np.nan] * 5 + [3.5] + [np.nan] * 3]
    assert agree["within_judge_cots_alpha_interval"] == pytest.approx(
        krippendorff.alpha(reliability_data=per_cot, level_of_measurement="interval"), abs=TOL)


def test_length_bias_and_cost_by_hand(absolute):
    lengths = [100, 300, 50, 200, 400, 250]  # A B C E F G
    bias = absolute["length_bias"]
    assert bias["n"] == 6
    assert bias["residual_spearman"] == pytest.approx(
        _spearman(lengths, np.subtract(KEPT_PRED, KEPT_GOLD)), abs=TOL)
    assert bias["prediction_spearman"] == pytest.approx(_spearman(lengths, KEPT_PRED), abs=TOL)
    cost = absolute["cost"]  # I (too long) was not judged
    assert cost["n"] == 8
    assert cost["total"] == {"prompt_tokens": 360.0, "generated_tokens": 45.0, "seconds": 12.0}
    assert cost["mean"]["prompt_tokens"] == pytest.approx(45.0, abs=TOL)
    assert cost["mean"]["generated_tokens"] == pytest.approx(45 / 8, abs=TOL)
    assert cost["mean"]["seconds"] == pytest.approx(1.5, abs=TOL)


def test_ten_point_scale_by_hand(tmp_path):
    rows = [
        _row("a", 7.5, 7.5, cots=[{"7": 0.5, "8": 0.5}]),            # y 8; tie -> mode 7: wrong; conf .5
        _row("b", 10.0, 10.0, cots=[{"10": 1.0}]),                   # all mass on 10: right; conf 1
        _row("c", 2.0, 5.5, cots=[{"1": .25, "2": .25, "9": .25, "10": .25}]),  # y 2; mode 1: wrong; conf .25
    ]
    out = diagnose_run(load_run(write_run(tmp_path, "j", "ten", rows, scale=(1, 10))))
    cal = out["calibration"]
    assert out["scale"] == [1, 10]
    assert [b["count"] for b in cal["bins"]] == [0, 0, 1, 0, 0, 1, 0, 0, 0, 1]
    assert cal["ece"] == pytest.approx((0.5 + 0.0 + 0.25) / 3, abs=TOL)
    assert cal["brier"] == pytest.approx((0.5 + 0.0 + (0.0625 + 0.5625 + 0.0625 + 0.0625)) / 3, abs=TOL)
    assert cal["nll"] == pytest.approx((-math.log(0.5) + 0.0 - math.log(0.25)) / 3, abs=TOL)
    # a: only [7, 8) counts, F = .5 either side of g: .25; b: 0; c: [1,2) .25² then seven segments at F = .5
    # on the right of g, then [9, 10) at F = .75
    assert cal["crps"] == pytest.approx((0.25 + 0.0 + (0.0625 + 7 * 0.25 + 0.0625)) / 3, abs=TOL)
    assert cal["coverage"] == {"0.5": 1.0, "0.8": 1.0, "0.9": 1.0}
    means = [7.5, 10.0, (1 + 2 + 9 + 10) / 4]
    assert out["readouts"]["mean"]["pearson"] == pytest.approx(_pearson([7.5, 10, 2], means), abs=TOL)
    assert out["readouts"]["median"]["spearman"] == pytest.approx(_spearman([7.5, 10, 2], [7, 10, 2]), abs=TOL)
    assert out["failures"]["at_midpoint"]["midpoint"] == 5.5
    assert out["agreement"]["weighted_kappa"] == pytest.approx(
        cohen_kappa_score([8, 10, 2], [8, 10, 6], labels=list(range(1, 11)), weights="quadratic"), abs=TOL)


def pair_rows() -> list[dict]:
    pairs = [("p1", 4.0, 2.0, 300, 100),       # margin 2, chosen longer
             ("p2", 3.0, 3.0, 100, 300),       # tie, chosen shorter
             ("p3", 2.0, 2.6, 100, 200),       # margin -0.6, chosen shorter
             ("p4", None, 3.0, 100, 100),      # chosen unparsed: unscored
             ("p5", 3.25, 3.0, 150, 150)]      # margin .25, same length
    rows = []
    for pair_id, chosen, rejected, chosen_chars, rejected_chars in pairs:
        for side, score, chars in (("chosen", chosen, chosen_chars), ("rejected", rejected, rejected_chars)):
            rows.append(_row(f"{pair_id}/{side}", None, score, status="ok" if score is not None else "parse_failure",
                             cots=[_probs([0.0, 0.5, 0.5, 0.0, 0.0])] if score is not None else [], chars=chars,
                             meta={"pair_id": pair_id, "side": side, "subset": "s", "section": "Chat"}))
    return rows


def test_pairwise_by_hand(tmp_path):
    out = diagnose_run(load_run(write_run(tmp_path, "j", "pairs", pair_rows(), kind="pairwise")))
    assert out["kind"] == "pairwise"
    assert out["pairs"] == {"n": 5, "scored": 4, "unscored": 1}
    assert out["accuracy"] == pytest.approx((1 + 0.5 + 0 + 1) / 4, abs=TOL)
    assert out["tie_rate"] == pytest.approx(0.25, abs=TOL)
    assert out["margin"]["mean"] == pytest.approx((2 + 0 - 0.6 + 0.25) / 4, abs=TOL)
    assert out["margin"]["quantiles"]["0"] == pytest.approx(-0.6, abs=TOL)
    assert out["margin"]["quantiles"]["1"] == 2.0
    assert sum(out["margin"]["histogram"]["counts"]) == 4
    by_bin = {(b["abs_low"], b["abs_high"]): (b["count"], b["accuracy"]) for b in out["accuracy_by_margin"]}
    assert by_bin == {(0.0, 0.0): (1, 0.5), (0.0, 0.5): (1, 1.0), (0.5, 1.0): (1, 0.0), (1.0, 2.0): (0, None),
                      (2.0, None): (1, 1.0)}
    split = out["length_bias"]
    assert split["chosen_longer"] == {"n": 1, "accuracy": 1.0}
    assert split["chosen_shorter"] == {"n": 2, "accuracy": 0.25}
    assert split["same_length"] == {"n": 1, "accuracy": 1.0}
    assert out["distribution"]["entropy"] == pytest.approx(math.log(2), abs=TOL)
    assert out["failures"]["failed"] == 1


def test_between_judges_alpha_matches_the_package(tmp_path):
    write_run(tmp_path, "a", "own", [_row("x", 1.0, 1.0), _row("y", 2.0, 2.5), _row("z", 3.0, 4.0),
                                     _row("only-a", 3.0, 3.0)])
    write_run(tmp_path, "b", "own", [_row("x", 1.0, 2.0), _row("y", 2.0, 2.0), _row("z", 3.0, None,
                                                                                   status="parse_failure"),
                                     _row("w", 3.0, 5.0)])
    write_run(tmp_path, "c", "own", [_row("x", 1.0, 1.5), _row("y", 2.0, 3.0), _row("z", 3.0, 3.5)])
    results = tract_eval.diagnose(tmp_path, agreement=True)
    between = results["a"]["own"]["agreement"]["between_judges"]
    assert between["b"] == {"n": 2, "alpha_interval": pytest.approx(
        krippendorff.alpha(reliability_data=[[1.0, 2.5], [2.0, 2.0]], level_of_measurement="interval"), abs=TOL)}
    assert between["c"]["alpha_interval"] == pytest.approx(
        krippendorff.alpha(reliability_data=[[1.0, 2.5, 4.0], [1.5, 3.0, 3.5]], level_of_measurement="interval"),
        abs=TOL)
    assert results["c"]["own"]["agreement"]["between_judges"]["a"] == between["c"]
    written = json.loads((tmp_path / "a" / "own" / "diagnostics.json").read_text())
    assert written["agreement"]["between_judges"]["c"]["n"] == 3


def test_command_writes_files_and_formats(tmp_path, capsys):
    folder = write_run(tmp_path, "judge", "own", absolute_rows(), results={"judge": "judge", "metrics": {"n": 9}})
    write_run(tmp_path, "judge", "pairs", pair_rows(), kind="pairwise")
    assert main(["diagnose", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "Absolute benchmarks" in table and "Pairwise benchmarks" in table and "ECE" in table
    written = json.loads((folder / "diagnostics.json").read_text())
    assert written["plots"] == ["reliability.png", "distribution.png"]
    for name in written["plots"]:
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((folder / "results.json").read_text())
    assert results["metrics"] == {"n": 9} and results["diagnostics"] == written  # updated, not replaced
    pair_results = json.loads((tmp_path / "judge" / "pairs" / "results.json").read_text())
    assert pair_results["diagnostics"]["kind"] == "pairwise"  # a run without results.json gets one
    assert not (tmp_path / "judge" / "pairs" / "reliability.png").exists()

    assert main(["diagnose", str(tmp_path), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"judge"} and set(data["judge"]) == {"own", "pairs"}
    assert data["judge"]["own"]["calibration"]["ece"] == written["calibration"]["ece"]

    assert main(["diagnose", str(folder), "--format", "markdown", "--agreement"]) == 0
    text = capsys.readouterr().out
    assert "| judge | bench |" in text and "entropy (nats)" in text and "no benchmark was run by two judges" in text


def test_write_diagnostics_for_one_folder(tmp_path):
    folder = write_run(tmp_path, "judge", "own", absolute_rows())
    out = write_diagnostics(folder)
    assert json.loads((folder / "diagnostics.json").read_text()) == out
    # a run whose rows no longer have distributions drops the plots of the earlier computation
    write_run(tmp_path, "judge", "own", [_row("E", 4.0, 4.0), _row("F", 2.0, 3.0)])
    assert write_diagnostics(folder)["plots"] == []
    assert not (folder / "reliability.png").exists() and not (folder / "distribution.png").exists()


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_bad_folders_are_one_line_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no predictions.jsonl" in _one_line_error(capsys, ["diagnose", str(empty)])
    assert "no such run folder" in _one_line_error(capsys, ["diagnose", str(tmp_path / "absent")])

    corrupt = write_run(tmp_path / "corrupt", "j", "own", absolute_rows())
    with open(corrupt / "predictions.jsonl", "a") as fh:
        fh.write("{not json\n" + json.dumps(_row("Z", 1.0, 1.0)) + "\n")
    assert "line 10 is not valid JSON" in _one_line_error(capsys, ["diagnose", str(corrupt)])

    bad_probs = write_run(tmp_path / "probs", "j", "own", [_row("A", 1.0, 1.0, cots=["nope"])])
    assert "row 1 field 'score_probs'" in _one_line_error(capsys, ["diagnose", str(bad_probs)])
    bad_key = write_run(tmp_path / "key", "j", "own", [_row("A", 1.0, 1.0, cots=[{"high": 1.0}])])
    assert "entry 'high'" in _one_line_error(capsys, ["diagnose", str(bad_key)])
    bad_status = write_run(tmp_path / "status", "j", "own", [_row("A", 1.0, 1.0, status="weird")])
    assert "field 'status' must be one of ok, parse_failure" in _one_line_error(capsys, ["diagnose", str(bad_status)])

    no_scale = write_run(tmp_path / "scale", "j", "own", [_row("A", 1.0, 1.0)])
    (no_scale / "manifest.json").write_text("{}")
    assert "the scale is unknown" in _one_line_error(capsys, ["diagnose", str(no_scale)])
    (no_scale / "manifest.json").write_text('{"bench": "vicuna"}')
    assert "manifest.json: field 'bench' must be an object" in _one_line_error(capsys, ["diagnose", str(no_scale)])
    (no_scale / "manifest.json").write_text("{broken")
    assert "manifest.json: not valid JSON" in _one_line_error(capsys, ["diagnose", str(no_scale)])

    bad_results = write_run(tmp_path / "results", "j", "own", [_row("A", 1.0, 1.0)])
    (bad_results / "results.json").write_text("{broken")
    assert "results.json: not valid JSON" in _one_line_error(capsys, ["diagnose", str(bad_results)])

    unpaired = write_run(tmp_path / "unpaired", "j", "pairs", [_row("A", None, 1.0)], kind="pairwise")
    assert "has no meta.pair_id and meta.side" in _one_line_error(capsys, ["diagnose", str(unpaired)])


def test_pairwise_only_folder_gets_pairwise_diagnostics(tmp_path, capsys):
    write_run(tmp_path, "j", "pairs", pair_rows(), kind="pairwise")
    assert main(["diagnose", str(tmp_path), "--agreement"]) == 0
    out = capsys.readouterr().out
    assert "Pairwise benchmarks" in out and "Absolute benchmarks" not in out


def test_interval_alpha_beyond_the_package_size_is_the_package_value():
    """Above PACKAGE_ALPHA_CELLS the interval α comes from its closed form; on inputs the package can take
    (here: forced by a small cell limit) both agree, missing values included."""
    from tract_eval.reports.diagnostics import _alpha

    rng = np.random.default_rng(0)
    data = rng.normal(3, 1, size=(3, 80))
    data[rng.random(data.shape) < 0.2] = np.nan
    data[:, 0] = [np.nan, np.nan, 2.0]  # a unit with one value: not pairable
    package = krippendorff.alpha(reliability_data=data, level_of_measurement="interval")
    assert _alpha(data, "interval") == pytest.approx(package, abs=TOL)
    assert _alpha(data, "interval", package_cells=10) == pytest.approx(package, abs=TOL)
    pairs = [list(rng.normal(size=50)), list(rng.normal(size=50))]
    assert _alpha(pairs, "interval", package_cells=10) == pytest.approx(
        krippendorff.alpha(reliability_data=pairs, level_of_measurement="interval"), abs=TOL)


def test_a_judged_run_records_response_length_and_is_diagnosed(tmp_path, data_dir):
    """Through the runner (an in-process backend, no model): rows record meta.response_chars, and a run of
    three CoTs gets the α across its CoTs, calibration on every row, and both plots."""
    from test_runner import LengthBackend

    from tract_eval.benchmarks import load_benchmark
    from tract_eval.judges import build_judge
    from tract_eval.runner import run_benchmark

    bench = load_benchmark("vicuna", data_dir)
    result = run_benchmark(build_judge("tract", backend=LengthBackend(), n_cot=3), bench, tmp_path, limit=4)
    rows = [json.loads(line) for line in (result.out_dir / "predictions.jsonl").read_text().splitlines()]
    lengths = {s.id: len(s.fields.response) for s in bench.samples[:4]}
    assert {r["id"]: r["meta"]["response_chars"] for r in rows} == lengths
    out = tract_eval.diagnose(result.out_dir)["tract"]["vicuna"]
    assert out["calibration"]["n"] == 4 and out["length_bias"]["n"] == 4
    per_cot = [[r["per_cot"][c] for r in rows] for c in range(3)]
    assert out["agreement"]["within_judge_cots_alpha_interval"] == pytest.approx(
        krippendorff.alpha(reliability_data=per_cot, level_of_measurement="interval"), abs=TOL)
    assert all((result.out_dir / name).is_file() for name in out["plots"]) and len(out["plots"]) == 2
