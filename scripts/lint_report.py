"""What a lint check of `make lint` found: one line each on stderr, a summary, and the exit status."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def report(problems: Sequence[object], summary: str) -> int:
    """Print each problem and, if any, `summary` (with their number first); 1 if any, else 0."""
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"{len(problems)} {summary}", file=sys.stderr)
        return 1
    return 0
