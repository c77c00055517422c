"""Fine-tuning judges: CE over CoT + score, RAFT, CoT-RAFT and TRACT's two-stage recipe.

Kept import-free so ``tract-eval --help`` does not load torch; see ``pipeline``,
``trainer``, ``objectives``, ``data`` and ``config``.
"""
