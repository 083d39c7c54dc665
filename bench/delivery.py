"""What the watchers received: every `seq` in order exactly once, and how late."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True, slots=True)
class SeqCheck:
    """How one or more watchers' sequences differ from 1, 2, …, expected."""

    received: int
    lost: int
    duplicates: int
    out_of_order: int
    unexpected: int
    # Watchers that got exactly 1..expected, in order.
    complete: int

    def __add__(self, other: SeqCheck) -> SeqCheck:
        return SeqCheck(
            self.received + other.received,
            self.lost + other.lost,
            self.duplicates + other.duplicates,
            self.out_of_order + other.out_of_order,
            self.unexpected + other.unexpected,
            self.complete + other.complete,
        )


NO_SEQS = SeqCheck(0, 0, 0, 0, 0, 0)


def check_seqs(seqs: Sequence[int], expected: int) -> SeqCheck:
    """Compare what one watcher received with `1..expected`."""
    unique = set(seqs)
    wanted = range(1, expected + 1)
    lost = sum(1 for seq in wanted if seq not in unique)
    out_of_order = sum(1 for before, after in itertools.pairwise(seqs) if after < before)
    unexpected = sum(1 for seq in unique if not 1 <= seq <= expected)
    complete = int(list(seqs) == list(wanted))
    duplicates = len(seqs) - len(unique)
    return SeqCheck(len(seqs), lost, duplicates, out_of_order, unexpected, complete)


def check_all(watchers: Iterable[Sequence[int]], expected: int) -> SeqCheck:
    """The sum of `check_seqs` over many watchers."""
    total = NO_SEQS
    for seqs in watchers:
        total = total + check_seqs(seqs, expected)
    return total


def latency_summary(seconds: Iterable[float]) -> dict[str, float | None]:
    """p50/p90/p99/max in milliseconds (nearest rank); None when nothing arrived."""
    ordered = sorted(seconds)
    names = [f"p{point}" for point in PERCENTILES] + ["max"]
    if not ordered:
        return dict.fromkeys(names)
    summary: dict[str, float | None] = {}
    for point in PERCENTILES:
        rank = max(1, math.ceil(point / 100 * len(ordered)))
        summary[f"p{point}"] = round(ordered[rank - 1] * 1000, 3)
    summary["max"] = round(ordered[-1] * 1000, 3)
    return summary
