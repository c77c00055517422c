"""The run identity's judge part, pinned: refactors of where settings are declared must not change a
fingerprint (a changed one would make every earlier run folder refuse to resume).

``tests/golden/judge_identities.json`` was written by the code before the identity was rebuilt from
declarations; regenerate it only for a deliberate, documented identity change:
``python tests/test_identity_golden.py --write``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden" / "judge_identities.json"
# (label, judge card, overrides): every built-in card, each protocol's own settings, sampling
# shapes (greedy drops top_p and seed), fallback, and backend options split into score and session
CASES = [
    *[(card, card, {}) for card in ("tract", "rail", "raft", "ce-decode", "ce-decode-cot", "prometheus-2")],
    ("tract-greedy", "tract", {"temperature": 0.0}),
    ("tract-sampled-readout", "tract", {"readout": "sampled", "n_cot": 4, "seed": 7}),
    ("rail-renormalized", "rail", {"renormalize": True, "partial_candidates": "renormalize"}),
    ("rail-anchor", "rail", {"score_only_anchor": "generation-prompt", "temperature": 0.5}),
    ("ce-fallback", "ce-decode", {"parse_failure_policy": "fallback", "fallback_score": 3.0}),
    ("prometheus-library", "prometheus-2", {"verdict_parser": "library", "unparsed_runs": "mean", "max_retries": 2}),
    ("prometheus-fail-row", "prometheus-2", {"unparsed_runs": "fail-row"}),
    ("tract-openai", "tract", {"backend": "openai", "model": "served", "backend_options": {
        "base_url": "http://127.0.0.1:1/v1", "api_key_env": "KEY", "concurrency": 4, "max_retries": 2,
        "timeout": 10.0, "mode": "single", "api_model": "m", "prices": {"m": [1, 2]}}}),
    ("tract-model-args", "tract", {"backend_options": {"model_args": {
        "revision": "main", "device_map": "auto", "max_memory": {"0": "1GB"}, "offload_folder": "/tmp/o",
        "low_cpu_mem_usage": True, "cache_dir": "/tmp/c", "trust_remote_code": True,
        "attn_implementation": "sdpa", "token": "secret"}}}),
    ("tract-vllm", "tract", {"backend": "vllm", "backend_options": {
        "tensor_parallel_size": 2, "engine_options": {"enforce_eager": True}}}),
]


def identities() -> dict:
    from tract_eval.judges import build_judge
    from tract_eval.identity import judge_settings_identity

    out = {}
    for label, card, overrides in CASES:
        config = build_judge(card, **{k: v for k, v in overrides.items() if k != "backend"}).config
        if "backend" in overrides:
            config = config.with_overrides(backend=overrides["backend"])
        out[label] = judge_settings_identity(config)
    return out


def test_judge_identities_are_unchanged():
    expected = json.loads(GOLDEN.read_text())
    got = identities()
    changed = [label for label in expected if got.get(label) != expected[label]]
    assert not changed, "run identity changed for: " + ", ".join(
        f"{label}: {expected[label]} -> {got.get(label)}" for label in changed)


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    GOLDEN.write_text(json.dumps(identities(), indent=1, sort_keys=True) + "\n")
