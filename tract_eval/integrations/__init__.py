"""Judges as parts of other tools: ``trl`` (a reward function for TRL's GRPOTrainer and kin).

Each integration imports its tool only when used, so this package needs nothing beyond tract-eval.
"""
