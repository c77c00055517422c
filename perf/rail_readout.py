"""CoT-RAIL cost: our single pass (readout from the generation's KV cache, shared prefill)
versus the reference code's way (generate, then a second full forward pass over prompt + CoT).

    python perf/rail_readout.py --rows 4 --n-cot 4 --max-new-tokens 64

Prints wall times measured in this one run and their ratios, plus the largest difference between
the two ways' candidate log-probabilities (they must agree).
"""
from __future__ import annotations

import argparse
import time

from tract_eval.backends import GenerationRequest, create_backend
from tract_eval.benchmarks import load_benchmark
from tract_eval.candidates import derive_score_candidates
from tract_eval.judge_config import SeededSampling
from tract_eval.judges import build_judge


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--n-cot", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    backend = create_backend("transformers", None)
    judge = build_judge("tract", backend=backend)
    samples = load_benchmark("vicuna", args.data_dir).select(args.rows)
    prompts = [judge.build_input(s) for s in samples]
    candidates = derive_score_candidates(backend.tokenizer())
    sampling = SeededSampling(max_new_tokens=args.max_new_tokens, seed=0)

    def ours(shared: bool):
        if shared:
            requests = [GenerationRequest(f"{i}", p, n=args.n_cot, candidates=candidates, cut_marker="So the overall")
                        for i, p in enumerate(prompts)]
        else:  # one request per CoT: each CoT prefills the prompt again
            requests = [GenerationRequest(f"{i}", p, n=1, first_index=k, candidates=candidates, cut_marker="So the overall")
                        for i, p in enumerate(prompts) for k in range(args.n_cot)]
        started = time.perf_counter()
        out = backend.generate(requests, sampling)
        return time.perf_counter() - started, [c for group in out for c in group], requests

    def reference(completions, requests):
        """Second full forward pass over prompt + CoT + delimiter (+ bridge) per CoT, as the reference code."""
        per_request = [r for r in requests for _ in range(r.n)]
        started = time.perf_counter()
        sequences = [backend.encode(r.prompt) + c.token_ids for r, c in zip(per_request, completions)]
        scores = backend.readout_logprobs(sequences, candidates)
        return time.perf_counter() - started, scores

    ours(True)  # warm-up (allocator, kernels)
    shared_s, completions, requests = ours(True)
    separate_s, _, _ = ours(False)
    second_pass_s, ref_scores = reference(completions, requests)
    diff = max(abs(a.candidate_logprobs[s] - b[s]) for a, b in zip(completions, ref_scores) for s in b)
    tokens = sum(c.generated_tokens for c in completions)
    print(f"rows={args.rows} n_cot={args.n_cot} max_new_tokens={args.max_new_tokens} generated_tokens={tokens}")
    print(f"ours, shared prefill, readout from the KV cache : {shared_s:8.2f} s")
    print(f"ours, prefill once per CoT                       : {separate_s:8.2f} s  ({separate_s / shared_s:.2f}x ours)")
    print(f"reference: + second full forward pass per CoT    : {shared_s + second_pass_s:8.2f} s  "
          f"({(shared_s + second_pass_s) / shared_s:.2f}x ours; the second pass alone {second_pass_s:.2f} s)")
    print(f"max |logprob difference| between the two readouts: {diff:.2e}")


if __name__ == "__main__":
    main()
