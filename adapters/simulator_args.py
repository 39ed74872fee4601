"""Argument types the device and provider simulators share (``tocsin simulate …``)."""

from __future__ import annotations

import argparse
import math


def fraction(raw: str) -> float:
    """A fraction from 0 to 1 (a failure rate, a reply rate)."""
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("give a fraction from 0 to 1")
    return value


def seconds(raw: str) -> float:
    """A number of seconds, 0 or more."""
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError("give a number of seconds ≥ 0")
    return value
