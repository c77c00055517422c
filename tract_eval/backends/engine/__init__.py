"""The transformers inference engine (contract below, filled in next)."""
from __future__ import annotations

from .forward import forward_last, left_padded
from .loop import EngineHost, JudgeLoop, run_judge_loop
from .readout import candidate_totals, candidate_variants
from .slot_cache import kv_shape, slot_cache_class

PREFILL_TOKENS = JudgeLoop.PREFILL_TOKENS

__all__ = ["EngineHost", "JudgeLoop", "PREFILL_TOKENS", "candidate_totals",
           "candidate_variants", "forward_last", "kv_shape", "left_padded", "run_judge_loop", "slot_cache_class"]
