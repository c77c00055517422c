import numpy as np
import pytest
from scipy import stats

from tract_eval.metrics import absolute_metrics, correlation_metrics, pairwise_metrics


def test_correlations_match_scipy():
    rng = np.random.default_rng(0)
    gold = rng.integers(1, 6, 50).astype(float)
    pred = gold + rng.normal(0, 1, 50)
    m = correlation_metrics(gold, pred)
    assert m["pearson"] == pytest.approx(stats.pearsonr(gold, pred)[0])
    assert m["pearson_p"] == pytest.approx(stats.pearsonr(gold, pred)[1])
    assert m["spearman"] == pytest.approx(stats.spearmanr(gold, pred)[0])
    assert m["kendall"] == pytest.approx(stats.kendalltau(gold, pred)[0])
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((gold - pred) ** 2)))
    assert m["n"] == 50


def test_constant_predictions_give_undefined_correlation_not_a_crash():
    m = correlation_metrics([1, 2, 3], [3, 3, 3])
    assert m["pearson"] is None and "undefined" in m["note"] and m["rmse"] == pytest.approx(np.sqrt(5 / 3))


def test_parse_failures_are_excluded_and_counted():
    rows = [
        {"gold": 1.0, "prediction": 1.5, "status": "ok"},
        {"gold": 2.0, "prediction": None, "status": "parse_failure"},
        {"gold": 3.0, "prediction": 2.5, "status": "ok"},
        {"gold": 4.0, "prediction": 3.0, "status": "fallback"},
    ]
    m = absolute_metrics(rows)
    assert (m["n"], m["n_total"], m["parse_failures"], m["fallbacks"]) == (3, 4, 2, 1)
    assert m["pearson"] == pytest.approx(stats.pearsonr([1, 3, 4], [1.5, 2.5, 3.0])[0])


def _pair(subset, section, pid, chosen, rejected):
    meta = {"subset": subset, "section": section, "pair_id": f"{subset}/{pid}"}
    return [
        {"id": f"{subset}/{pid}/chosen", "prediction": chosen, "meta": {**meta, "side": "chosen"}},
        {"id": f"{subset}/{pid}/rejected", "prediction": rejected, "meta": {**meta, "side": "rejected"}},
    ]


def test_rewardbench_accuracy_ties_sections_and_reasoning_weighting():
    rows = (
        _pair("alpacaeval-easy", "Chat", 1, 4.0, 2.0)      # win
        + _pair("alpacaeval-easy", "Chat", 2, 3.0, 3.0)    # tie = half
        + _pair("mt-bench-hard", "Chat Hard", 3, 1.0, 2.0)  # loss
        + _pair("donotanswer", "Safety", 4, None, 2.0)     # parse failure: excluded, counted
        + _pair("donotanswer", "Safety", 5, 5.0, 1.0)
        + _pair("math-prm", "Reasoning", 6, 1.0, 5.0)      # math 0.0
        + _pair("hep-go", "Reasoning", 7, 5.0, 1.0)        # code 1.0
        + _pair("hep-rust", "Reasoning", 8, 5.0, 1.0)
        + _pair("hep-rust", "Reasoning", 9, 5.0, 1.0)
    )
    m = pairwise_metrics(rows)
    assert m["subsets"]["alpacaeval-easy"] == {"accuracy": 0.75, "n": 2}
    assert m["sections"]["Chat"]["accuracy"] == 0.75
    assert m["sections"]["Chat Hard"]["accuracy"] == 0.0
    assert m["sections"]["Safety"] == {"accuracy": 1.0, "n": 1}
    # math-prm weighs as much as all hep-* together: 0.5 * 0 + 0.5 * 1
    assert m["sections"]["Reasoning"]["accuracy"] == 0.5
    assert m["score"] == pytest.approx((0.75 + 0.0 + 1.0 + 0.5) / 4)
    assert (m["n_pairs"], m["ties"], m["parse_failures"]) == (9, 1, 1)


def test_half_judged_pairs_are_not_scored():
    rows = _pair("alpacaeval-easy", "Chat", 1, 4.0, 2.0)[:1]
    assert pairwise_metrics(rows)["n_pairs"] == 0
