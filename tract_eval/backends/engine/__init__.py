"""The inference engine: TRACT's judge loop on a transformers causal LM. This docstring is its contract.

**What it takes.** :func:`run_judge_loop` ``(host, requests, sampling, on_done=None, batch_size=None)``:

- a *host* (:class:`EngineHost`): the model (a transformers causal LM in eval mode), its tokenizer
  (``encode``, ``decode``, a pad id), the device, the ids that end a continuation (``eos_ids``),
  whether prompts prefill in padded batches (``batch_prefill``), the token-level stop test
  ``may_end``, ``auto_batch_size`` and an ``inference()`` context (no autograd, the CPU output head).
  :class:`~tract_eval.backends.transformers_backend.TransformersBackend` is the host in this package;
- *requests* (:class:`~tract_eval.backends.base.GenerationRequest`): per sample a key, the rendered
  prompt, ``n`` CoTs numbered from ``first_index``, and for RAIL judges the score *candidates*
  (:class:`~tract_eval.candidates.ScoreCandidates`: delimiter, bridge ids, one id sequence per score),
  the cut marker, stop strings and the readout mode (``reference`` or ``sampled``);
- the *sampling settings* (:class:`~tract_eval.judge_config.SeededSampling`: temperature, top-p,
  repetition penalty, ``max_new_tokens`` and the *seed*), and ``batch_size``: sequences decoded at once (all when
  None, ``"auto"``: as many as fit in GPU memory).

It returns, per request, its ``n`` :class:`~tract_eval.backends.base.Completion` objects in CoT order,
and calls ``on_done(index, completions)`` as soon as request ``index`` is complete.

**What it guarantees.**

1. *Per-CoT random streams.* CoT ``i`` of a request draws from its own stream, seeded
   ``stream_seed(seed, key, first_index + i)``; draw ``t`` is ``sampling.stream_uniforms(stream, t)``.
   A CoT's tokens therefore depend only on (seed, sample key, CoT index) and the model: never on the
   batch size, the slot, the order of requests, the other requests or how prompts were prefilled, and
   CoTs ``K..2K-1`` asked for later (``first_index=K``) are those a ``2K``-CoT request makes. (Batched
   float32 matmuls round differently from unbatched ones, so a near-tied draw can flip in float32;
   tests pin the equality in float64.)
2. *The draw.* transformers' repetition penalty and temperature processors, then inverse-CDF sampling
   over ``TopPLogitsWarper``'s top-p set (tokens by score, ties by id; :mod:`.sampling`); greedy
   (argmax) when the temperature is 0.
3. *How a CoT ends.* At an end-of-sequence id (never fed, never in ``token_ids``), the delimiter, a stop
   string or ``max_new_tokens`` (``finish_reason``: eos, delimiter, stop, length). A RAIL CoT is then
   finished by TRACT's rule, :func:`tract_eval.protocol.finish_cot`: kept up to a stop or the cut
   marker, the delimiter forced where it is missing, the bridge appended.
4. *Where the score is read.* After prompt + kept CoT + forced text + bridge ids (``readout="sampled"``
   keeps the sampled ids; ``"reference"``, the reference's second pass, retokenizes prompt + stripped
   CoT as one text): the candidates' log-probabilities at the next position, a multi-token candidate
   summing its tokens and giving up the mass of longer candidates it prefixes
   (:func:`tract_eval.protocol.exclusive_sequence_logprobs`; :mod:`.readout`). ``Completion.text``
   and ``token_ids`` are exactly what the score was read after.
5. *Readout equality with the reference scorer.* Those log-probabilities equal one uncached, unpadded
   forward per candidate over ``encode(prompt) + token_ids`` (``tests/readout_reference.py``) within
   1e-4 in float32, whether the readout ran in place in the slot cache or over a gathered copy, with
   the cut CoT's tail masked, and for multi-token candidates.
6. *Continuous batching.* ``batch_size`` slots share one preallocated KV cache
   (:mod:`.slot_cache`); requests are admitted longest prompt first, each prompt prefilled once for
   all its CoTs; a finished CoT's slot goes to the next waiting CoT before the next step; once nothing
   waits and half the slots are idle they are dropped (``shrink_idle_slots=False`` keeps them, as
   static batching does: a timing knob, never a token changes).

**What it relies on in transformers.** Not public API, so listed with where each is used in
:data:`.internals.TRANSFORMERS_INTERNALS` and checked on every test run (``tests/test_engine_internals.py``,
fast): the slot cache subclasses ``cache_utils.Cache`` (``layers=``, ``update`` / ``get_seq_length`` /
``get_mask_sizes`` handed to the layers) and ``cache_utils.DynamicLayer`` (``update`` and
``get_seq_length`` overridden, ``get_mask_sizes`` inherited, ``keys`` / ``values`` / ``is_initialized``
set); grouped attention registers ``grouped_sdpa`` in ``AttentionInterface`` (read through
``ALL_ATTENTION_FUNCTIONS``) and ``masking_utils.AttentionMaskInterface`` with ``sdpa_mask``, wraps
``integrations.sdpa_attention.sdpa_attention_forward`` and switches models with
``set_attn_implementation`` where ``_supports_attention_backend``; forwards pass ``past_key_values``,
``position_ids`` and ``logits_to_keep``; :func:`kv_shape` reads ``get_text_config()``'s
``num_hidden_layers``, ``num_key_value_heads``, ``num_attention_heads``, ``head_dim`` and
``hidden_size``; the CPU output head takes ``get_output_embeddings()``.

**Modules.** :mod:`.loop` (the judge loop and :func:`run_judge_loop`), :mod:`.slot_cache`,
:mod:`.sampling`, :mod:`.readout`, :mod:`.forward`, :mod:`.grouped_attention`, :mod:`.output_head`,
:mod:`.internals`. The engine imports nothing of the backends but ``backends.base`` (requests and
completions); the adapters import it.
"""
from __future__ import annotations

from .forward import forward_last, left_padded
from .loop import EngineHost, JudgeLoop, run_judge_loop
from .readout import candidate_totals, candidate_variants
from .slot_cache import kv_shape, slot_cache_class

PREFILL_TOKENS = JudgeLoop.PREFILL_TOKENS  # padded prompt tokens per prefill forward (bounds its memory)

__all__ = ["EngineHost", "JudgeLoop", "PREFILL_TOKENS", "candidate_totals", "candidate_variants", "forward_last",
           "kv_shape", "left_padded", "run_judge_loop", "slot_cache_class"]
