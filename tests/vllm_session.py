"""Run inside the vLLM virtualenv by tests/test_vllm_backend.py: one engine start for two checks.

    python tests/vllm_session.py OUT TRACT-EVAL-RUN-ARGS...

1. ``tract-eval run ARGS`` (the real command, in this process);
2. the same engine (reused through create_backend's cache) reads the score after each written CoT
   *as text* (``score``), so the test can compare it with transformers on identical token ids,
   apart from the ids the engine sampled (a sampled CoT may be tokenized unlike its text).
Writes OUT/rescored.json: one list per row of candidate log-probabilities per CoT.
"""
import json
import sys
from pathlib import Path

if __name__ == "__main__":  # vLLM starts worker processes: keep the guard
    from tract_eval import backends
    from tract_eval.backends.base import ScoreRequest
    from tract_eval.cli import main

    out, args = Path(sys.argv[1]), sys.argv[2:]
    if main(args) != 0:
        sys.exit("tract-eval run failed")
    backend = backends._last[1]  # the engine the run used
    manifest = json.loads((out / "tract" / "vicuna" / "manifest.json").read_text())
    from tract_eval.candidates import derive_score_candidates

    candidates = derive_score_candidates(backend.tokenizer())
    rows = [json.loads(line) for line in (out / "tract" / "vicuna" / "predictions.jsonl").read_text().splitlines()]
    rescored = []
    for row in rows:
        requests = [ScoreRequest(row["input"], cot[: len(cot) - len(candidates.bridge_text)], candidates)
                    for cot in row["cots"]]
        rescored.append([c.candidate_logprobs for c in backend.score(requests)])
    (out / "rescored.json").write_text(json.dumps(rescored))
