"""Each judge's model input and readout against the reference protocols (../shared/reference).

The oracles are the reference code's own operations (named per test) applied to the benchmark rows
and to the reference strings read from ../shared/reference; they run on a Mistral-style tokenizer
built offline (tests/local_tokenizers.py) and, marked slow, on the embedded model's tokenizer.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from local_tokenizers import mistral_style_tokenizer
from tract_eval.backends import Backend, Completion
from tract_eval.backends.base import render_chat_with_tokenizer
from tract_eval.benchmarks import load_benchmark
from tract_eval.judges import build_judge
from tract_eval.prompts import score_only_instruction
from tract_eval.protocol import REFERENCE_STOP_STRINGS, finish_cot

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
DELIMITER = "So the overall score is"
FILES = {"vicuna": "vicuna_eval.json", "mt-bench": "mt_bench_eval.json"}
ROWS = 12  # rows per benchmark compared byte for byte


def reference_text(name: str) -> str:
    return (REFERENCE / name).read_text(encoding="utf-8")


def tract_row_instruction(row: dict) -> str:
    """TRACT dataset_utils.prepare_dataset: the row's instruction stripped on the right."""
    return row["instruction"].rstrip().rstrip(",").rstrip('"').rstrip()


def tract_remove_reference(lm_input: str) -> str:
    """TRACT inference.py --remove_reference, on the templated model input."""
    return lm_input.split("###Reference Answer")[0] + "###Score Rubrics:" + lm_input.split("###Score Rubrics:")[-1]


def tract_cot_splitter(cot: str) -> str:
    """TRACT inference.py cot_splitter."""
    return cot.split("So the overall")[0].strip() + " So the overall score is "


def vllm_stop(text: str, stops) -> str:
    """What vLLM returns for a CoT sampled with stop strings: the text before the first one."""
    return text[: min([text.index(s) for s in stops if s in text], default=len(text))]


@pytest.fixture(params=[pytest.param("mistral", id="mistral-style"),
                        pytest.param("embedded", id="embedded", marks=pytest.mark.slow)])
def tokenizer(request, data_dir):
    if request.param == "mistral":
        return mistral_style_tokenizer(str(data_dir))
    return request.getfixturevalue("embedded_tokenizer")


@pytest.fixture(params=sorted(FILES))
def bench_rows(request, data_dir):
    rows = json.loads((data_dir / "prometheus" / FILES[request.param]).read_text(encoding="utf-8"))
    return load_benchmark(request.param, data_dir), rows[:ROWS]


class ScriptedBackend(Backend):
    """A backend on a real tokenizer whose generations come from ``script(request, attempt_key)``;
    it records every request and sampling setting it is given."""

    name = "scripted"

    def __init__(self, tokenizer, script):
        self._tokenizer, self.script = tokenizer, script
        self.generations: list[tuple] = []
        self.scores: list = []

    def tokenizer(self):
        return self._tokenizer

    def render_chat(self, messages, response_prefix=""):
        return render_chat_with_tokenizer(self._tokenizer, messages, response_prefix)

    def generate(self, requests, sampling, on_done=None, batch_size=None):
        out = []
        for index, request in enumerate(requests):
            self.generations.append((request, sampling))
            out.append([self.script(request, request.first_index + i) for i in range(request.n)])
            if on_done:
                on_done(index, out[-1])
        return out

    def score(self, requests):
        self.scores += requests
        return [Completion(r.candidates.bridge_text, "forced", 0, candidate_logprobs={s: -2.0 for s in r.candidates.scores})
                for r in requests]


# -- point 2: CoT inputs ------------------------------------------------------------------------

@pytest.mark.parametrize("judge_name", ["tract", "ce-decode-cot"])
def test_cot_input_is_the_stripped_row_instruction_in_the_chat_template(tokenizer, bench_rows, judge_name):
    bench, rows = bench_rows
    judge = build_judge(judge_name)
    for sample, row in zip(bench.samples, rows):
        expected = tokenizer.apply_chat_template([{"role": "user", "content": tract_row_instruction(row)}],
                                                 tokenize=False, add_generation_prompt=True)
        assert judge.build_input_with(tokenizer, sample) == expected
        assert row["instruction"].endswith("###Feedback: ")  # the space the strip removes


@pytest.mark.parametrize("judge_name", ["tract", "rail"])
def test_no_reference_removes_what_tract_removes(tokenizer, data_dir, judge_name):
    with_reference = load_benchmark("vicuna", data_dir)
    without = load_benchmark("vicuna", data_dir, drop_reference=True)
    judge = build_judge(judge_name)
    for full, cut in zip(with_reference.samples[:ROWS], without.samples[:ROWS]):
        text = judge.build_input_with(tokenizer, full)
        assert "###Reference Answer" in text
        reference = tract_remove_reference(text)
        if judge.config.protocol.startswith("score-only"):
            reference = reference.strip()  # the score-only input is stripped after the removal
        assert judge.build_input_with(tokenizer, cut) == reference
        assert "###Reference Answer" not in reference and "a reference answer that gets a score of 5" in reference


@pytest.mark.parametrize("judge_name", ["rail", "raft", "ce-decode"])
def test_score_only_judges_keep_the_reference_answer_by_default(tokenizer, data_dir, judge_name):
    """Issue 18 point 7: TRACT's inference/evaluation_result/results.csv logs 386 runs, all mode feedback_score,
    remove_reference False in 74 and not yet a column in 312: no logged run removed the reference answer; only
    inference/run_score_only.sh passes --remove (writing evaluation_result_score_only_no_reference/). The
    default keeps it; --no-reference is that script's input."""
    bench = load_benchmark("vicuna", data_dir)
    judge = build_judge(judge_name)
    for sample in bench.samples[:3]:
        assert not sample.fields.remove_reference
        assert "###Reference Answer (Score 5):" in judge.build_input_with(tokenizer, sample)


# -- point 1: score-only protocol ---------------------------------------------------------------

def test_score_only_instruction_is_the_reference_bytes():
    assert score_only_instruction() == reference_text("tract/inference_score_only_instruction.txt")


def tract_continue_final_message(tokenizer, messages: list[dict]) -> str:
    """TRACT inference.py's ``apply_chat_template(add_generation_prompt=False, continue_final_message=True)``
    under its pinned transformers 4.47 (envs/inference_requirements.txt): the chat rendered closed,
    cut after the last occurrence of the final content (retried stripped), so an empty content keeps
    the closed turn. (transformers 5 opens an empty final turn instead.)"""
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    final = messages[-1]["content"]
    try:
        return rendered[: rendered.rindex(final) + len(final)]
    except ValueError:
        final = final.strip()
        return rendered[: rendered.rindex(final) + len(final)]


@pytest.mark.parametrize("anchor", ["reference", "generation-prompt"])
@pytest.mark.parametrize("judge_name", ["rail", "raft", "ce-decode"])
def test_score_only_readout_context_is_tracts_byte_for_byte(tokenizer, bench_rows, judge_name, anchor):
    bench, rows = bench_rows
    judge = build_judge(judge_name, score_only_anchor=anchor)
    assert judge.variant.writes_cot is False
    candidates = judge.candidates_with(tokenizer)
    instruction = reference_text("tract/inference_score_only_instruction.txt")
    for sample, row in zip(bench.samples, rows):
        content = instruction + tract_row_instruction(row).split("###The instruction to evaluate:")[-1]
        messages = [{"role": "user", "content": content}]
        if anchor == "reference":  # TRACT: [user, assistant ""] continued (a closed turn on ChatML)
            lm_input = tract_continue_final_message(tokenizer, messages + [{"role": "assistant", "content": ""}])
        else:  # the named option: the opened assistant turn (inference.py's TODO, behaviour 2)
            lm_input = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        expected = lm_input.replace("</s>", "").strip() + " "
        text = judge.build_input_with(tokenizer, sample)
        assert text + candidates.bridge_text == expected
        ids = tokenizer(expected, add_special_tokens=False)["input_ids"]
        assert ids == tokenizer(text, add_special_tokens=False)["input_ids"] + list(candidates.bridge_ids)
        for score, sequence in zip(candidates.scores, candidates.sequences):
            with_score = tokenizer(expected + str(score), add_special_tokens=False)["input_ids"]
            assert with_score == ids + list(sequence)


def test_a_chat_ending_with_an_assistant_turn_is_continued_as_transformers_does(tokenizer):
    from transformers import AutoTokenizer  # noqa: F401  (the installed version is the oracle here)

    messages = [{"role": "user", "content": "Rate it."}, {"role": "assistant", "content": "The answer is fine."}]
    assert render_chat_with_tokenizer(tokenizer, messages) == tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=False, continue_final_message=True)
    empty = [messages[0], {"role": "assistant", "content": ""}]
    assert render_chat_with_tokenizer(tokenizer, empty) == tract_continue_final_message(tokenizer, empty)


def test_score_only_rail_reads_at_the_first_assistant_token(data_dir):
    backend = ScriptedBackend(mistral_style_tokenizer(str(data_dir)), script=None)
    judge = build_judge("rail", backend=backend)
    samples = load_benchmark("vicuna", data_dir).samples[:3]
    rows = judge.judge(samples)
    assert [r.prompt_tokens > 0 for r in rows] == [True] * 3
    assert all(r.continuation == "" and r.candidates.delimiter == "" for r in backend.scores)
    assert [r.prompt for r in backend.scores] == [judge.build_input(s) for s in samples]
    # raw probabilities (no renormalisation) by default, as the reference
    assert rows[0].prediction == pytest.approx(sum(range(1, 6)) * 2.718281828459045 ** -2.0)


def test_score_only_decode_samples_one_token_after_the_bridge(data_dir):
    tokens = iter(["4", "five", " 2."])
    backend = ScriptedBackend(mistral_style_tokenizer(str(data_dir)), lambda r, i: Completion(next(tokens), "length", 1))
    judge = build_judge("ce-decode", backend=backend)
    samples = load_benchmark("vicuna", data_dir).samples[:3]
    rows = judge.judge(samples)
    assert [r.per_cot for r in rows] == [[4.0], [None], [2.0]]  # float(text.strip().strip('.')), else NaN
    for (request, sampling), sample in zip(backend.generations, samples):
        assert request.prompt == judge.build_input(sample) + " " and request.n == 1
        assert sampling.max_new_tokens == 1 and sampling.temperature == judge.config.sampling.temperature
    assert rows[0].cots == [" 4"] and rows[0].input + rows[0].cots[0] == backend.generations[0][0].prompt + "4"


# -- point 3: stopping and cutting --------------------------------------------------------------

COTS = [
    "The response is accurate. So the overall score is",
    "The response is accurate.\nSo the overall score is",
    "The response is accurate.   ",
    "So the overall quality is fine. It misses one step. So the overall score is",
    "Clear and correct. [RESULT] 4",
    "Clear and correct.[RESULT] 4",
    "Helpful, although So the overall verdict [RESULT] 3",
    "",
    "No verdict at all, just feedback about the response",
]


@pytest.mark.parametrize("cot", COTS)
def test_finish_cot_is_tracts_cot_splitter_after_the_stop_strings(cot):
    kept, forced, cut = finish_cot(cot, DELIMITER, "So the overall", REFERENCE_STOP_STRINGS)
    assert cot.startswith(kept)
    assert kept + forced + " " == tract_cot_splitter(vllm_stop(cot, REFERENCE_STOP_STRINGS))
    assert cut == (len(kept) < len(cot) and kept + forced != cot)


def test_cot_rail_requests_stop_at_result_and_cut(data_dir):
    backend = ScriptedBackend(mistral_style_tokenizer(str(data_dir)),
                              lambda r, i: Completion("x So the overall score is ", "delimiter", 3,
                                                      candidate_logprobs={s: -2.0 for s in range(1, 6)}))  # mass 0.68 <= 1
    judge = build_judge("tract", backend=backend)
    judge.judge(load_benchmark("vicuna", data_dir).samples[:1])
    request, _ = backend.generations[0]
    assert request.stop == REFERENCE_STOP_STRINGS and request.cut_marker == "So the overall"
    assert request.candidates is not None and request.candidates.delimiter == DELIMITER


def test_cot_decode_cuts_then_samples_one_score_token(data_dir):
    def script(request, index):
        if request.key.endswith("\0score\0" + str(index)) or "\0score\0" in request.key:
            return Completion("3", "length", 1)
        return Completion("Mostly right. So the overall quality is good. [RESULT] 5", "stop", 12)

    backend = ScriptedBackend(mistral_style_tokenizer(str(data_dir)), script)
    judge = build_judge("ce-decode-cot", backend=backend)
    sample = load_benchmark("vicuna", data_dir).samples[0]
    row = judge.judge([sample])[0]
    (cot_request, cot_sampling), (score_request, score_sampling) = backend.generations
    assert set(REFERENCE_STOP_STRINGS) <= set(cot_request.stop) and cot_request.candidates is None
    assert cot_sampling.max_new_tokens == judge.config.sampling.max_new_tokens
    expected = tract_cot_splitter(vllm_stop("Mostly right. So the overall quality is good. [RESULT] 5",
                                            REFERENCE_STOP_STRINGS))
    assert score_request.prompt == judge.build_input(sample) + expected
    assert score_sampling.max_new_tokens == 1 and score_request.key != cot_request.key
    assert row.per_cot == [3.0] and row.cut == [True] and row.cots == [expected.rstrip(" ") + " 3"]


# -- point 4: Prometheus-2 ------------------------------------------------------------------------

def test_prometheus_input_is_prometheus_evals(tokenizer, bench_rows):
    bench, rows = bench_rows
    judge = build_judge("prometheus-2")
    system = reference_text("prometheus/ABS_SYSTEM_PROMPT.txt")
    assert judge.config.system_prompt == system
    for sample, row in zip(bench.samples, rows):
        instruction = row["instruction"].strip().rstrip('",')  # eval/benchmark/data_loader.py:84
        if "system" in tokenizer.chat_template:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": instruction}]
        else:
            messages = [{"role": "user", "content": system + instruction}]
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert judge.build_input_with(tokenizer, sample) == expected


@pytest.mark.parametrize("good_at, expected_retries", [(0, 0), (2, 2), (5, 5), (None, 5)])
def test_prometheus_regenerates_unparsable_outputs_from_fresh_streams(data_dir, good_at, expected_retries):
    keys = []

    def script(request, index):
        keys.append(request.key)
        attempt = len([k for k in keys if k.split("\0")[0] == request.key.split("\0")[0]]) - 1
        text = "Fine. [RESULT] 4" if good_at is not None and attempt >= good_at else "Fine, I would say four."
        return Completion(text, "eos", 6)

    backend = ScriptedBackend(mistral_style_tokenizer(str(data_dir)), script)
    judge = build_judge("prometheus-2", backend=backend, n_cot=1)  # one run (the card's default is 3)
    row = judge.judge(load_benchmark("vicuna", data_dir).samples[:1])[0]
    assert row.retries == [expected_retries]
    assert len(keys) == expected_retries + 1 and len(set(keys)) == len(keys)  # a fresh stream each time
    if good_at is None:
        assert row.status == "parse_failure" and row.prediction is None
    else:
        assert row.per_cot == [4.0] and row.status == "ok"


@pytest.mark.parametrize("parser, retries", [("reference", 5), ("lenient", 0)])
def test_prometheus_regenerates_on_prometheus_evals_strict_rule_by_default(data_dir, parser, retries):
    """prometheus-eval's eval/run_evaluate.py:parse_output wants exactly "[RESULT] n"; "[RESULT] Score: 4"
    is regenerated there (and under the default), while the lenient parser reads it."""
    backend = ScriptedBackend(mistral_style_tokenizer(str(data_dir)),
                              lambda r, i: Completion("Fine. [RESULT] Score: 4", "eos", 6))
    judge = build_judge("prometheus-2", backend=backend, verdict_parser=parser, n_cot=1)
    row = judge.judge(load_benchmark("vicuna", data_dir).samples[:1])[0]
    assert row.retries == [retries]
    assert row.per_cot == ([None] if parser == "reference" else [4.0])


def test_regeneration_count_is_a_card_setting(data_dir):
    backend = ScriptedBackend(mistral_style_tokenizer(str(data_dir)), lambda r, i: Completion("no score", "eos", 2))
    judge = build_judge("prometheus-2", backend=backend, max_retries=1, n_cot=1)
    row = judge.judge(load_benchmark("vicuna", data_dir).samples[:1])[0]
    assert row.retries == [1] and len(backend.generations) == 2


def calculate_results_a2a(prometheus_scores: list[list[int]], gpt4_scores: list[float], feedback_bench: bool):
    """prometheus-eval eval/utils.py:calculate_results, mode a2a (lines 68-98): the row's score is
    statistics.mean of its runs; Feedback Bench also reports the accuracy of the first run, in %."""
    import statistics

    means = [statistics.mean(runs) for runs in prometheus_scores if runs]
    results = {"means": means}
    if feedback_bench:
        firsts = [runs[0] for runs in prometheus_scores]
        results["Accuracy"] = sum(1 for x, y in zip(firsts, gpt4_scores) if x == y) / len(firsts) * 100
    return results


def test_prometheus_card_scores_a_row_with_the_mean_of_three_runs(data_dir):
    """eval/run_evaluate.py:439 runs=3 for a2a, each run regenerating its own unparsable outputs."""
    verdicts = {0: ["[RESULT] 3"], 1: ["no verdict", "[RESULT] 4"], 2: ["[RESULT] 4"]}
    seen: dict = {}

    def script(request, index):
        attempt = seen.setdefault(index, 0)
        seen[index] += 1
        texts = verdicts[index]
        return Completion("Feedback. " + texts[min(attempt, len(texts) - 1)], "eos", 6)

    backend = ScriptedBackend(mistral_style_tokenizer(str(data_dir)), script)
    judge = build_judge("prometheus-2", backend=backend)
    assert judge.config.n_cot == 3 and judge.config.unparsed_runs == "fail-row"
    row = judge.judge(load_benchmark("vicuna", data_dir).samples[:1])[0]
    assert backend.generations[0][0].n == 3
    assert row.per_cot == [3.0, 4.0, 4.0] and row.retries == [0, 1, 0] and len(row.cots) == 3
    assert row.prediction == pytest.approx(calculate_results_a2a([[3, 4, 4]], [4.0], False)["means"][0])
    assert row.status == "ok"


def test_prometheus_row_with_a_run_that_stays_unparsed_is_unscored(data_dir):
    """The reference raises when an output is still unparsable after 5 retries (run_evaluate.py:122-125),
    so it never means fewer than all runs: the row gets no score (TRACT judges keep the mean of the rest)."""
    def script(request, index):
        return Completion("Feedback. " + ("no verdict" if index == 1 else "[RESULT] 4"), "eos", 6)

    backend = ScriptedBackend(mistral_style_tokenizer(str(data_dir)), script)
    row = build_judge("prometheus-2", backend=backend).judge(load_benchmark("vicuna", data_dir).samples[:1])[0]
    assert row.per_cot == [4.0, None, 4.0] and row.retries == [0, 5, 0]
    assert row.prediction is None and row.status == "parse_failure"
    mean_rule = build_judge("prometheus-2", backend=ScriptedBackend(backend.tokenizer(), script), unparsed_runs="mean")
    assert mean_rule.judge(load_benchmark("vicuna", data_dir).samples[:1])[0].prediction == 4.0


def test_feedback_bench_adds_the_first_runs_accuracy():
    from tract_eval.metrics import first_run_accuracy
    from tract_eval.records import Prediction

    runs = [[4, 5, 4], [2, 2, 3], [5, 4, 4], [1, 1, 1]]
    gold = [4.0, 3.0, 4.0, 1.0]
    rows = [Prediction(id=str(i), gold=g, prediction=sum(r) / 3, status="ok", per_cot=[float(v) for v in r])
            for i, (r, g) in enumerate(zip(runs, gold))]
    expected = calculate_results_a2a(runs, gold, feedback_bench=True)
    assert first_run_accuracy(rows) == pytest.approx(expected["Accuracy"]) == 50.0
    assert [r.prediction for r in rows] == pytest.approx(expected["means"])
    assert first_run_accuracy([Prediction(id="x", gold=4.0, prediction=3.7, status="ok", per_cot=[3.7])]) is None  # no verdict
    from tract_eval.benchmarks import load_card

    assert load_card("feedback-bench").options["first_run_accuracy"] is True
    assert not load_card("vicuna").options.get("first_run_accuracy")


# -- the backends honour stop strings (slow: the embedded model) --------------------------------

@pytest.mark.slow
def test_transformers_backend_stops_at_stop_strings_and_reads_after_the_cut(embedded_backend):
    from tract_eval.backends import GenerationRequest
    from tract_eval.candidates import derive_score_candidates
    from tract_eval.judge_config import SeededSampling

    prompt = embedded_backend.render_chat([{"role": "user", "content": "Write two sentences about the sea."}])
    sampling = SeededSampling(max_new_tokens=24, seed=0)
    candidates = derive_score_candidates(embedded_backend.tokenizer())
    plain, rail = embedded_backend.generate([
        GenerationRequest(key="a", prompt=prompt, stop=("e",)),
        GenerationRequest(key="a", prompt=prompt, stop=("e",), candidates=candidates, cut_marker="So the overall"),
    ], sampling)
    assert plain[0].finish_reason == "stop" and "e" in plain[0].text[-4:]
    assert rail[0].finish_reason == "stop" and rail[0].cut
    kept = rail[0].text[: -len(" " + DELIMITER + candidates.bridge_text)]
    assert rail[0].text.endswith(" " + DELIMITER + candidates.bridge_text) and "e" not in kept
    assert kept == plain[0].text[: plain[0].text.index("e")].strip()  # the reference readout strips the CoT


# -- training rows in the judge's layout (points 1 and 5) ----------------------------------------

@pytest.mark.parametrize("judge_name, objective", [("raft", "raft"), ("ce-decode", "ce")])
def test_score_only_training_rows_put_the_score_at_the_opened_assistant_turn(tokenizer, judge_name, objective):
    """Chat fine-tuning renders [user, assistant: score]: the score follows the opened turn. That is
    where the ``generation-prompt`` anchor reads; the reference anchor reads there too on templates
    that render an empty final turn open (Mistral), not on ChatML (docs/reference/protocols.md)."""
    from tract_eval.training.objectives import IGNORE
    from tract_eval.training.pipeline import encode_rows
    from tract_eval.training.data import TrainingRow

    prompt = reference_text("tract/no_feedback.prompt").format(
        orig_instruction="Name a prime.", orig_response="7", orig_reference_answer="2", orig_criteria="Correct?",
        **{f"orig_score{k}_description": f"level {k}" for k in range(1, 6)})
    for anchor in ("reference", "generation-prompt"):
        judge = build_judge(judge_name, score_only_anchor=anchor)
        row = TrainingRow("r", prompt, "", 4)
        candidates, features, _ = encode_rows([row], tokenizer, judge, objective, 100000, template="chat-template")
        chat = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True).rstrip()
        chat_ids = tokenizer(chat, add_special_tokens=False)["input_ids"]
        ids, labels = features[0]["input_ids"], features[0]["labels"]
        score_id = candidates.sequences[candidates.scores.index(4)][0]
        assert ids == chat_ids + list(candidates.bridge_ids) + [score_id, tokenizer.eos_token_id]
        assert tokenizer.decode(ids[:-1]) == tokenizer.decode(chat_ids) + " 4"  # right after "[/INST] " / "assistant "
        assert (labels[-2] == IGNORE) == (objective == "raft")
    readout = build_judge(judge_name, score_only_anchor="generation-prompt").training_input_with(tokenizer, prompt)
    assert readout == chat


def llama_factory_mistral(tokenizer, user: str, assistant: str) -> tuple[list[int], list[int]]:
    """LLaMA-Factory @ c6e3c14a, template "mistral" (data/template.py: format_prefix {bos_token},
    format_user "[INST] {{content}}[/INST]", format_assistant " {{content}}" + {eos_token}; Template._encode
    encodes each message's slots apart with add_special_tokens=False), as processors/supervised.py
    ``_encode_supervised_example`` pairs them: (prompt ids, response ids)."""
    def encode(text):
        return tokenizer.encode(text, add_special_tokens=False)

    return [tokenizer.bos_token_id] + encode("[INST] " + user + "[/INST]"), encode(" " + assistant) + [tokenizer.eos_token_id]


def prepare_dataset_target(output: str) -> str:
    """TRACT finetuning_utils/prepare_dataset.py --cot_no_result (lines 117-118)."""
    final_score = output.split("[RESULT]")[-1].strip()
    return output.split("So the overall")[0].strip() + f" So the overall score is {final_score}"


@pytest.mark.parametrize("objective", ["cot_raft", "ce"])
def test_training_rows_are_tokenized_as_llama_factory_does_by_default(data_dir, objective):
    from tract_eval.training.data import prepare
    from tract_eval.training.objectives import IGNORE
    from tract_eval.training.pipeline import encode_rows

    tokenizer = mistral_style_tokenizer(str(data_dir))
    judge = build_judge("tract")
    records = json.loads((data_dir / "prometheus" / "vicuna_eval.json").read_text())[:5]
    rows = prepare([str(data_dir / "prometheus" / "vicuna_eval.json")], force_delimiter=True, limit=5).rows
    candidates, features, _ = encode_rows(rows, tokenizer, judge, objective, 100000)
    for row, feature in zip(rows, features):
        record = records[int(row.id.split(":")[1])]
        output = record["gpt4_feedback"][int(row.id.split(":")[2])]
        output = f"{output.split('[RESULT]')[0].strip()} So the overall. [RESULT] {row.score}"  # Feedback Collection's shape
        prompt_ids, response_ids = llama_factory_mistral(tokenizer, row.prompt.rstrip(), prepare_dataset_target(output))
        assert feature["input_ids"] == prompt_ids + response_ids
        # custom_processor.py: labels = the response, its second-to-last token (the score) masked for CoT-RAFT
        expected = list(response_ids)
        if objective == "cot_raft":
            expected[-2] = IGNORE
        assert feature["labels"] == [IGNORE] * len(prompt_ids) + expected
        assert response_ids[-2] == candidates.sequences[candidates.scores.index(row.score)][0]
    # the layout this replaced: the judge's inference input, the CoT encoded apart ("▁The" vs " The" aside,
    # "[INST] x [/INST]" there, "[INST] x[/INST]" in LLaMA-Factory's template)
    _, old, _ = encode_rows(rows, tokenizer, judge, objective, 100000, template="chat-template")
    assert all(a["input_ids"] != b["input_ids"] for a, b in zip(old, features))


def test_score_only_rows_follow_llama_factory_too(data_dir):
    from tract_eval.training.data import TrainingRow
    from tract_eval.training.pipeline import encode_rows

    tokenizer = mistral_style_tokenizer(str(data_dir))
    prompt = reference_text("tract/no_feedback.prompt").format(
        orig_instruction="Name a prime.", orig_response="7", orig_reference_answer="2", orig_criteria="Correct?",
        **{f"orig_score{k}_description": f"level {k}" for k in range(1, 6)})
    _, features, _ = encode_rows([TrainingRow("r", prompt, "", 4)], tokenizer, build_judge("raft"), "raft", 100000)
    prompt_ids, response_ids = llama_factory_mistral(tokenizer, prompt, "4")  # prepare_dataset.py score_only: "4"
    assert features[0]["input_ids"] == prompt_ids + response_ids


def test_training_template_auto_picks_the_reference_family(data_dir):
    from tract_eval.training.objectives import resolve_training_template

    assert resolve_training_template("auto", mistral_style_tokenizer(str(data_dir))) == "mistral"

    class Llama3:
        chat_template = "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}"

    class ChatML:
        chat_template = "{{ '<|im_start|>' + message['role'] }}"

    assert resolve_training_template("auto", Llama3()) == "llama3"
    assert resolve_training_template("auto", ChatML()) == "chat-template"
    assert resolve_training_template("chat-template", Llama3()) == "chat-template"


def test_without_a_cut_marker_a_written_delimiter_still_ends_the_cot():
    assert finish_cot("Fine. " + DELIMITER, DELIMITER, None) == ("Fine. " + DELIMITER, "", False)
    assert finish_cot("Fine. So the overall quality", DELIMITER, None) == ("Fine. So the overall quality",
                                                                           " " + DELIMITER, False)


def test_a_decoded_score_outside_the_scale_is_kept_as_the_reference_reads_it(data_dir):
    """TRACT reads the sampled score token with float(); a "6" on a 1-5 scale is the model's answer, kept as
    6.0 (not a backend bug that stops the run, as an expected score outside the scale would be)."""
    backend = ScriptedBackend(mistral_style_tokenizer(str(data_dir)), lambda r, i: Completion("6", "length", 1))
    judge = build_judge("ce-decode", backend=backend)
    row = judge.judge(load_benchmark("vicuna", data_dir).samples[:1])[0]
    assert row.per_cot == [6.0] and row.prediction == 6.0 and row.status == "ok"
