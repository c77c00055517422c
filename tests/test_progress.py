"""Progress lines for log files: every N samples or T seconds, with rate and ETA."""
from __future__ import annotations

import io

from tract_eval.progress import ProgressLines


def test_lines_every_n_samples_or_seconds_with_rate_and_eta():
    now = [0.0]
    out = io.StringIO()
    lines = ProgressLines("tract × vicuna", 100, out, every_samples=10, every_seconds=30, clock=lambda: now[0])
    for _ in range(9):
        now[0] += 1
        lines.advance()
    assert out.getvalue() == ""  # neither 10 samples nor 30 s yet
    now[0] += 1
    lines.advance()
    assert out.getvalue() == "tract × vicuna: 10/100 (10%) 1.00 samples/s, elapsed 00:00:10, ETA 00:01:30\n"
    now[0] += 40  # a slow sample: the time rule writes a line
    lines.advance()
    assert out.getvalue().splitlines()[-1].startswith("tract × vicuna: 11/100 (11%) 0.22 samples/s, elapsed 00:00:50")
    lines.advance(89)
    assert out.getvalue().splitlines()[-1].endswith("100/100 (100%) 2.00 samples/s, elapsed 00:00:50, ETA 00:00:00")
