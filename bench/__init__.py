"""Benchmarks and load checks: each prints figures; none is a pass/fail test."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop like the gateway (where installed), so every process of a benchmark
    (load generator, fakes, relay) has the same event loop as the one it measures."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
