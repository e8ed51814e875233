"""argparse value types that reject out-of-range command options (argparse's error names the option), and the
check that per-split list options of a command pair up."""

from __future__ import annotations

import argparse
import math
from typing import Callable, Sequence


def bounded(
    kind: type, low: float | None = None, high: float | None = None, *, low_open: bool = False,
    high_open: bool = False,
) -> Callable[[str], float]:
    """Parser of a finite ``kind`` (int or float) value within [low, high] (open ends with low_open / high_open)."""
    noun = "an integer" if kind is int else "a number"
    if low is not None and high is not None:
        expected = f"{noun} in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        expected = f"{noun} {'>' if low_open else '>='} {low}"
    else:
        expected = f"{noun} {'<' if high_open else '<='} {high}"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


PROBABILITY = bounded(float, 0, 1)
FRACTION = bounded(float, 0, 1, high_open=True)
POSITIVE = bounded(float, 0, low_open=True)
POSITIVE_INT = bounded(int, 1)
SEED = bounded(int, 0)


def paired_lengths(command: str, args: argparse.Namespace, reference: str, others: Sequence[str]) -> int:
    """The number of values of the list option ``reference`` (an argparse dest, e.g. ``durations``); a
    ValueError naming the option when one of ``others`` has another number of values (one per split each)."""
    n = len(getattr(args, reference))
    for dest in others:
        got = len(getattr(args, dest))
        if got != n:
            raise ValueError(f"{command}: --{dest.replace('_', '-')}: expected {n} values (one per "
                             f"--{reference.replace('_', '-')}), got {got}")  # fmt: skip
    return n
