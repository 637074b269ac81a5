"""The test fixtures' own rules: which Redis database each parallel test worker flushes, and
which tests run alone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import SERIAL_MODULES, SERIAL_TESTS, with_test_db

TESTS = Path(__file__).parent


@pytest.mark.parametrize(
    ("url", "worker", "expected"),
    [
        ("redis://127.0.0.1:6379", 0, "redis://127.0.0.1:6379/15"),
        ("redis://127.0.0.1:6379", 1, "redis://127.0.0.1:6379/14"),
        ("redis://127.0.0.1:6379/", 1, "redis://127.0.0.1:6379/14"),
        ("redis://:pw@host:6379/3?socket_timeout=5", 1, "redis://:pw@host:6379/2?socket_timeout=5"),
        ("redis://127.0.0.1:6379/0", 0, "redis://127.0.0.1:6379/0"),
        ("redis://127.0.0.1:6379/0", 1, "redis://127.0.0.1:6379/1"),
        ("unix:///tmp/r.sock", 1, "unix:///tmp/r.sock?db=14"),
        ("unix:///tmp/r.sock?db=4&x=1", 1, "unix:///tmp/r.sock?x=1&db=3"),
    ],
)
def test_each_worker_gets_its_own_database(url: str, worker: int, expected: str) -> None:
    """REDIS_URL's database (15 when it names none) for the first worker, the next lower for
    the next (higher where lower would go below 0), its other parts kept."""
    assert with_test_db(url, worker) == expected


def test_two_workers_never_share_a_database() -> None:
    """For any database REDIS_URL names, the two parallel workers of `make test` differ."""
    for db in range(16):
        url = f"redis://127.0.0.1:6379/{db}"
        assert with_test_db(url, 0) != with_test_db(url, 1)


def test_every_test_named_serial_exists() -> None:
    """Each module and test the suite runs alone exists: one renamed would silently run in the
    parallel phase."""
    for module in SERIAL_MODULES:
        assert (TESTS / f"{module}.py").is_file(), module
    for entry in SERIAL_TESTS:
        file, name = entry.split("::")
        assert re.search(rf"^(async )?def {name}\(", (TESTS / file).read_text(), re.M), entry
