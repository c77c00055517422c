"""Run inside the vLLM virtualenv by tests/test_vllm_backend.py: one engine start for two checks.

    python tests/vllm_session.py OUT TRACT-EVAL-RUN-ARGS...

1. ``tract-eval run ARGS`` (the real command, in this process);
2. the same engine (reused through create_backend's cache) reads the score after each written CoT
   *as text* (``score``), so the test can compare it with transformers on identical token ids,
   apart from the ids the engine sampled (a sampled CoT may be tokenized unlike its text).
3. the backend primitives on the same texts: ``loglikelihood`` of each CoT after its input (what
   perplexity scores) and ``candidate_logprobs`` right after input + CoT.
Writes OUT/rescored.json: one list per row of candidate log-probabilities per CoT, and
OUT/primitives.json: {"pairs", "loglikelihood", "contexts", "candidate_logprobs"}.
"""
import json
import sys
from pathlib import Path

def primitive_checks(backend, rows, candidates) -> dict:
    """Log-likelihood of each CoT after its input and the candidates' log-probabilities after input + CoT
    (the test runs the same on other backends and compares)."""
    from tract_eval.experiments.analysis import own_cot_text

    pairs = [(row.input, own_cot_text(row, i, candidates.delimiter)) for row in rows for i in range(len(row.cots))]
    pairs = [pair for pair in pairs if pair[1]]
    contexts = [row.input + cot for row in rows for cot in row.cots]
    return {"pairs": pairs, "loglikelihood": backend.loglikelihood(pairs), "contexts": contexts,
            "candidate_logprobs": backend.candidate_logprobs(contexts, candidates)}


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
    from tract_eval.records import read_predictions

    rows = read_predictions(out / "tract" / "vicuna" / "predictions.jsonl")
    rescored = []
    for row in rows:
        requests = [ScoreRequest(row.input, cot[: len(cot) - len(candidates.bridge_text)], candidates)
                    for cot in row.cots]
        rescored.append([c.candidate_logprobs for c in backend.score(requests)])
    (out / "rescored.json").write_text(json.dumps(rescored))
    primitives = primitive_checks(backend, rows, candidates)
    (out / "primitives.json").write_text(json.dumps(primitives))
