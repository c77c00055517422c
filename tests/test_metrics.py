import json
import random
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from tract_eval.benchmarks import load_card
from tract_eval.metrics import LEADERBOARD, absolute_metrics, correlation_metrics, pair_outcomes
from tract_eval.metrics import pairwise_metrics as _pairwise_metrics
from tract_eval.records import Prediction
from tract_eval.reports.stats import pairwise_scores

RB = load_card("rewardbench").section_scheme()  # the card's sections and reward-bench's weights


def pairwise_metrics(rows, unparsed="half"):
    return _pairwise_metrics(rows, RB, unparsed)


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
        Prediction(id="a", gold=1.0, prediction=1.5, status="ok"),
        Prediction(id="b", gold=2.0, prediction=None, status="parse_failure"),
        Prediction(id="c", gold=3.0, prediction=2.5, status="ok"),
        Prediction(id="d", gold=4.0, prediction=3.0, status="fallback"),
    ]
    m = absolute_metrics(rows)
    assert (m["n"], m["n_total"], m["parse_failures"], m["fallbacks"]) == (3, 4, 2, 1)
    assert m["pearson"] == pytest.approx(stats.pearsonr([1, 3, 4], [1.5, 2.5, 3.0])[0])


def _pair(subset, section, pid, chosen, rejected):
    meta = {"subset": subset, "section": section, "pair_id": f"{subset}/{pid}"}
    status = lambda score: "ok" if score is not None else "parse_failure"  # noqa: E731
    return [
        Prediction(id=f"{subset}/{pid}/chosen", gold=None, prediction=chosen, status=status(chosen),
                   meta={**meta, "side": "chosen"}),
        Prediction(id=f"{subset}/{pid}/rejected", gold=None, prediction=rejected, status=status(rejected),
                   meta={**meta, "side": "rejected"}),
    ]


REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def reference_weights():
    data = json.loads((REFERENCE / "rewardbench" / "sections.json").read_text())
    return data["EXAMPLE_COUNTS"], data["SUBSET_MAPPING"]


def reward_bench_sections(accuracy: dict) -> dict:
    """A direct computation of reward-bench's calculate_scores_per_section from sections.json, for the
    sections with at least one judged subset."""
    counts, mapping = reference_weights()
    out = {}
    for section, names in mapping.items():
        present = [n for n in names if n in accuracy]
        if present:
            out[section] = sum(accuracy[n] * counts[n] for n in present) / sum(counts[n] for n in present)
    return out


def test_card_weights_and_sections_are_reward_benchs():
    counts, mapping = reference_weights()
    assert RB.weights == counts
    assert {k: sorted(v) for k, v in RB.sections.items()} == {k: sorted(v) for k, v in mapping.items()}
    assert list(RB.sections) == list(mapping)  # report order: reward-bench's section order


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("unparsed", ["half", "exclude"])
def test_rewardbench_rule_on_synthetic_outcomes(seed, unparsed):
    counts, mapping = reference_weights()
    rng = random.Random(seed)
    rows, expected_outcomes = [], {}
    subsets = rng.sample(sorted(counts), k=rng.randint(1, len(counts)))
    section_of = {n: s for s, names in mapping.items() for n in names}
    for subset in subsets:
        for pid in range(rng.randint(1, 6)):
            chosen, rejected = (rng.choice([None, 1.0, 2.0, 3.0, 4.0, 5.0]) for _ in range(2))
            rows += _pair(subset, section_of[subset], pid, chosen, rejected)
            if chosen is None or rejected is None:
                outcome = 0.5 if unparsed == "half" else None
            else:
                outcome = 1.0 if chosen > rejected else 0.5 if chosen == rejected else 0.0
            if outcome is not None:
                expected_outcomes.setdefault(subset, []).append(outcome)
    m = pairwise_metrics(rows, unparsed)
    accuracy = {n: sum(v) / len(v) for n, v in expected_outcomes.items()}
    assert {n: s["accuracy"] for n, s in m["subsets"].items()} == pytest.approx(accuracy)
    sections = reward_bench_sections(accuracy)
    assert {n: s["accuracy"] for n, s in m["sections"].items()} == pytest.approx(sections)
    assert m["score"] == pytest.approx(sum(sections.values()) / len(sections) if sections else None)
    # the report/bootstrap path computes the same numbers through the same rule
    keys = [p for p in pair_outcomes(rows, unparsed).values() if p["outcome"] is not None]
    arrays = pairwise_scores(np.array([p["subset"] for p in keys], dtype=object),
                             np.array([p["outcome"] for p in keys], dtype=float), RB)
    assert {k: v for k, v in arrays.items() if k != LEADERBOARD} == pytest.approx(sections)
    coverage = m["coverage"]
    assert set(coverage["subsets"]) == set(accuracy) and coverage["complete"] == (len(accuracy) == len(counts))
    assert set(coverage["sections"]) | set(coverage["missing_sections"]) == set(mapping)


def test_rewardbench_ties_and_unparsed_pairs():
    rows = (
        _pair("alpacaeval-easy", "Chat", 1, 4.0, 2.0)      # win
        + _pair("alpacaeval-easy", "Chat", 2, 3.0, 3.0)    # tie = half
        + _pair("alpacaeval-easy", "Chat", 3, None, 2.0)   # unscored side = half (reward-bench)
        + _pair("math-prm", "Reasoning", 6, 1.0, 5.0)      # math 0.0
        + _pair("hep-go", "Reasoning", 7, 5.0, 1.0)        # code 1.0
    )
    m = pairwise_metrics(rows)
    assert m["subsets"]["alpacaeval-easy"] == {"accuracy": pytest.approx(2 / 3), "n": 3}
    assert (m["n_pairs"], m["ties"], m["parse_failures"]) == (5, 1, 1)
    # Reasoning: math-prm weighs 984 against hep-go's 164, as reward-bench's EXAMPLE_COUNTS say
    assert m["sections"]["Reasoning"]["accuracy"] == pytest.approx((0 * 984 + 1 * 164) / (984 + 164))
    assert m["coverage"]["missing_sections"] == ["Chat Hard", "Safety"]
    assert "Chat" in m["coverage"]["incomplete_sections"]
    excluded = pairwise_metrics(rows, "exclude")
    assert excluded["subsets"]["alpacaeval-easy"] == {"accuracy": 0.75, "n": 2}
    assert excluded["parse_failures"] == 1 and excluded["unparsed_pairs"] == "exclude"


def test_half_judged_pairs_are_not_scored():
    rows = _pair("alpacaeval-easy", "Chat", 1, 4.0, 2.0)[:1]
    assert pairwise_metrics(rows)["n_pairs"] == 0
