"""`bot serve --procs N`: one parent keeps N processes of a role running.

The parent runs no gateway itself. With REDIS_URL unset it starts the embedded Redis, so the
children share one server that outlives any of them; then it starts N children
(`bot serve --role R --reuse-port`). Web and all children listen on the same BOT_PORT through
SO_REUSEPORT, and the kernel spreads connections across them. A child that exits while the
parent runs is restarted, after 1 s, doubling up to 30 s while it keeps dying within a minute
of its start. SIGTERM or SIGINT is passed to every child, which drains its turns and exits;
the parent exits 0 when every child did, else 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping, Sequence

from bot.logs import Logger

FIRST_RESTART = 1.0
MAX_RESTART = 30.0
STEADY = 60.0  # a child that ran this long before dying is restarted after FIRST_RESTART again


async def _wait_or_stop(proc: asyncio.subprocess.Process, stop: asyncio.Event) -> None:
    """Until the child exits or `stop` is set."""
    waiters = {asyncio.ensure_future(proc.wait()), asyncio.ensure_future(stop.wait())}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


async def _sleep_or_stop(seconds: float, stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


class ProcessGroup:
    """N children of one `bot serve` role, restarted when they die, stopped together."""

    def __init__(
        self,
        *,
        count: int,
        argv: Sequence[str],
        env: Mapping[str, str],
        log: Logger,
        grace_seconds: float,
    ) -> None:
        self.count = count
        self.argv = list(argv)
        self.env = dict(env)
        self.log = log
        self.grace_seconds = grace_seconds
        self.pids: dict[int, int] = {}  # child index → its current pid

    async def run(self, stop: asyncio.Event) -> int:
        """Keep the children running until `stop`; 0 if every child then exited cleanly."""
        codes = await asyncio.gather(*(self._keep(index, stop) for index in range(self.count)))
        # A child still starting when asked to stop dies of the signal itself: that is clean.
        return 0 if all(code in (0, -signal.SIGTERM) for code in codes) else 1

    async def _keep(self, index: int, stop: asyncio.Event) -> int | None:
        loop = asyncio.get_running_loop()
        delay = FIRST_RESTART
        while True:
            proc = await asyncio.create_subprocess_exec(*self.argv, env=self.env)
            self.pids[index] = proc.pid
            started = loop.time()
            self.log.info("child_started", child=index, pid=proc.pid)
            await _wait_or_stop(proc, stop)
            if stop.is_set():
                return await self._stop(index, proc)
            lived = loop.time() - started
            delay = FIRST_RESTART if lived >= STEADY else delay
            self.log.error(
                "child_exited",
                child=index,
                pid=proc.pid,
                code=proc.returncode,
                lived_s=round(lived, 1),
                restart_in_s=delay,
            )
            await _sleep_or_stop(delay, stop)
            if stop.is_set():
                return 0
            delay = min(delay * 2, MAX_RESTART)

    async def _stop(self, index: int, proc: asyncio.subprocess.Process) -> int | None:
        """SIGTERM the child (it drains), SIGKILL it after the grace period."""
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(self.grace_seconds):
                    await proc.wait()
            except TimeoutError:
                self.log.error("child_killed", child=index, pid=proc.pid, error="did not drain")
                proc.kill()
                await proc.wait()
        self.log.info("child_stopped", child=index, pid=proc.pid, code=proc.returncode)
        return proc.returncode


def child_argv(role: str) -> list[str]:
    """The command line of one child: this interpreter running `bot serve` for `role`."""
    return [sys.executable, "-m", "bot", "serve", "--role", role, "--reuse-port"]


def child_env(redis_url: str | None) -> dict[str, str]:
    """The parent's environment, pointing the children at the Redis it chose."""
    env = dict(os.environ)
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    return env
