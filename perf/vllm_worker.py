"""One vLLM replica for ``perf/judge_loop.py --backend vllm`` (run with the vLLM environment's python).

    python perf/vllm_worker.py SPEC.json

SPEC (written by judge_loop.py): model folder (save_pretrained of the random-weight model plus the
tokenizer), prompts as token ids, batch sizes, new tokens, sampling, seed, tensor-parallel size,
this replica's rank and the number of replicas (data parallel), and a folder for the barrier files.

vLLM's data parallelism for dense models is independent replicas (its offline DP mode refuses dense
models), so each replica is one process: it takes every ``dp``-th sequence of a batch. The replicas
load their engines, say ``ready-RANK``, then for each timed step wait for ``go-STEP`` (written by
the parent once every replica and the transformers runs of that batch are done), run it and write
``done-STEP-RANK.json``. A step generates the batch once with ``max_tokens=min_tokens=N`` (every
sequence writes exactly N tokens, EOS ignored); ms per decode step is each request's time from its
first to its last token over N - 1 (the engine's own per-request timestamps), averaged over the batch.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def wait_for(path: Path, timeout: float = 3600.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"vllm worker: no {path.name} after {timeout:.0f} s")
        time.sleep(0.05)


def main(spec_path: str) -> None:
    from vllm import LLM, SamplingParams, TokensPrompt

    spec = json.loads(Path(spec_path).read_text())
    barrier, rank, dp = Path(spec["barrier"]), spec["rank"], spec["dp"]
    started = time.perf_counter()
    llm = LLM(model=spec["model"], dtype=spec["dtype"], tensor_parallel_size=spec["tp"], seed=spec["seed"],
              enable_prefix_caching=False,  # the same prompts come again at every batch size: compute them
              disable_log_stats=False,  # per-request timestamps (RequestOutput.metrics)
              **spec.get("engine_options", {}))
    load_seconds = time.perf_counter() - started

    def params(max_tokens: int) -> SamplingParams:
        s = spec["sampling"]
        return SamplingParams(temperature=s["temperature"], top_p=s["top_p"], repetition_penalty=s["repetition_penalty"],
                              max_tokens=max_tokens, min_tokens=max_tokens, ignore_eos=True, seed=None)

    def run(prompts: list[list[int]], max_tokens: int) -> dict:
        started = time.perf_counter()
        outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params(max_tokens), use_tqdm=False)
        seconds = time.perf_counter() - started
        steps = []
        for output in outputs:
            metrics = output.metrics
            if metrics is None or not metrics.last_token_ts:
                raise RuntimeError("vLLM returned no per-request timestamps (RequestOutput.metrics)")
            steps.append((metrics.last_token_ts - metrics.first_token_ts) / max(1, max_tokens - 1))
        return {"seconds": seconds, "generated_tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
                "ms_per_step": 1000 * sum(steps) / len(steps)}

    run(spec["prompts"][:1], 4)  # warm-up: kernels, allocator
    (barrier / f"ready-{rank}").write_text(json.dumps({"load_seconds": load_seconds}))
    for step, batch in enumerate(spec["batches"]):
        mine = [spec["prompts"][i % len(spec["prompts"])] for i in range(batch)][rank::dp]
        wait_for(barrier / f"go-{step}")
        result = run(mine, spec["new_tokens"]) if mine else {"seconds": 0.0, "generated_tokens": 0}
        (barrier / f"done-{step}-{rank}.json").write_text(json.dumps({"batch": batch, "sequences": len(mine), **result}))


if __name__ == "__main__":  # vLLM starts worker processes: keep the guard
    main(sys.argv[1])
