"""Where a turn's Redis commands go: by command and by Lua script, turns apart from idle work.

One `bot serve --role all` against the fakes of `bench.pipeline` (a model answering "ok" after
`--model-ms`, Twilio's Messages API) and one Redis (REDIS_URL or an embedded server), watched
with MONITOR. First the gateway sits idle for `--idle` seconds: its background work (sweeps,
LM Studio refresh, outbox and reminder polling, breaker probes, heartbeats), reported per
second. Then `bench.loadgen` sends `--rate` x `--seconds` signed WhatsApp webhooks, one per
conversation (a plain turn: a question, an answer, one reply sent), and every command Redis
runs until the last reply is in is counted, per turn. A command a Lua script runs is counted
under that script (MONITOR shows a script's own calls right after the EVAL/EVALSHA that ran
it), and its inner commands are listed beneath it; round trips per turn are INFO stats
`total_reads_processed` over the load. The figures under load include the background work of
those seconds; the idle rate says how much of it there is.

MONITOR slows Redis down, so this bench counts and never times; `bench.pipeline` times. It
does read the gateway's CPU over the idle window (all its processes, /proc): an idle gateway's
share of a core (`--idle 60` for issue #28's measure).

`--returning`: the same load is sent once before the measured one, unmeasured, so the measured
turns are every sender's second: conversations that exist (their memory, usage keys and daily
totals already made), as in a deployment's steady state; without it, every turn is a new
conversation's first (bench.pipeline's load), which creates its keys.
Run: `.venv/bin/python -m bench.turncost [--rate 50] [--seconds 4] [--idle 10] [--returning]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib
import inspect
import pkgutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis

import bench
import bot
from bench.pipeline import (
    MEASURED_PREFIX,
    collect_replies,
    cpu_total,
    family,
    free_port,
    gateway_command,
    run_loadgen,
    spawn,
    stop,
    wait_ready,
)
from bot.redisdb import connect
from bot.scripts import Script
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.fakes.twilio_server import FakeTwilio

SCRIPT_CALLS = {"eval", "evalsha", "eval_ro", "evalsha_ro"}


def source(module: object) -> str:
    with contextlib.suppress(OSError, TypeError):
        return "\n" + inspect.getsource(module)  # type: ignore[arg-type]
    return ""


def script_names() -> dict[str, str]:
    """Every Lua script of the gateway, by its source and by its SHA1: `module.NAME`."""
    names: dict[str, str] = {}
    for info in pkgutil.walk_packages(bot.__path__, "bot."):
        if info.name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional extra that is not installed (the mcp SDK)
            continue
        for attr, value in vars(module).items():
            # Defined here (`NAME = Script(…)` or made, like FINISH), not imported from elsewhere.
            if isinstance(value, Script) and f"\n{attr} = " in source(module):
                name = f"{info.name.removeprefix('bot.')}.{attr}"
                names[value.source] = name
                names[hashlib.sha1(value.source.encode()).hexdigest()] = name
    return names


def unquote(line: str) -> list[str]:
    """The arguments of one MONITOR line (`ts [db addr] "a" "b\\n"`), unescaped as Redis
    escaped them (sdscatrepr: \\n \\r \\t \\a \\b \\" \\\\ and \\xHH)."""
    args: list[str] = []
    i = line.index("]") + 1
    escapes = {"n": "\n", "r": "\r", "t": "\t", "a": "\a", "b": "\b", '"': '"', "\\": "\\"}
    while (start := line.find('"', i)) != -1:
        out, j = [], start + 1
        while line[j] != '"':
            if line[j] == "\\":
                if line[j + 1] == "x":
                    out.append(chr(int(line[j + 2 : j + 4], 16)))
                    j += 4
                    continue
                out.append(escapes.get(line[j + 1], line[j + 1]))
                j += 2
                continue
            out.append(line[j])
            j += 1
        args.append("".join(out))
        i = j + 1
    return args


def key_shape(key: str) -> str:
    """A key with its variable parts elided: hash tags (`{…}`) and what follows the prefix."""
    head, brace, _ = key.partition("{")
    if brace:
        return head + "{…}"
    parts = key.split(":")
    return ":".join(parts[:3]) if len(parts) > 1 else key


@dataclass
class Tally:
    """Commands seen: top-level ones by name (a script by its name), and each script's own
    calls by command."""

    top: Counter[str] = field(default_factory=Counter)
    inner: dict[str, Counter[str]] = field(default_factory=dict)
    total: int = 0

    def add(self, line: str, scripts: dict[str, str], current: list[str]) -> None:
        if " [" not in line or "]" not in line:
            return
        args = unquote(line)
        if not args:
            return
        command = args[0].lower()
        self.total += 1
        if "lua]" in line.split('"', 1)[0]:
            owner = current[0] if current else "(unknown script)"
            self.inner.setdefault(owner, Counter())[command] += 1
            return
        if command in SCRIPT_CALLS and len(args) > 1:
            name = scripts.get(args[1], f"(script {args[1][:12]!r})")
            current[:] = [name]
            self.top[name] += 1
            return
        if command in ("info", "monitor"):
            self.total -= 1
            return
        self.top[f"{command} {key_shape(args[1])}" if len(args) > 1 else command] += 1

    def with_inner(self, name: str) -> int:
        return self.top[name] + sum(self.inner.get(name, Counter()).values())


async def watch(url: str, tally: Tally, scripts: dict[str, str]) -> None:
    """MONITOR into `tally` until cancelled (reading the raw status lines)."""
    client = aioredis.from_url(url, decode_responses=True)
    try:
        async with client.monitor() as monitor:
            # A monitored command can be longer than asyncio's 64 KiB line limit (a script's
            # source sent as EVAL, a long argument list): raise it for this connection.
            reader = monitor.connection._reader
            if reader is not None:
                reader._limit = 1 << 26
            current: list[str] = []
            while True:
                tally.add(str(await monitor.connection.read_response()), scripts, current)
    finally:
        await client.aclose()


async def watching(url: str, tally: Tally, scripts: dict[str, str]) -> asyncio.Task[None]:
    """A MONITOR task, once Redis has it as a monitor (its OK read)."""
    task = asyncio.create_task(watch(url, tally, scripts))
    await asyncio.sleep(0.3)
    return task


async def unwatch(task: asyncio.Task[None]) -> None:
    await asyncio.sleep(0.3)  # the lines already sent
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def print_tally(title: str, tally: Tally, per: float, unit: str) -> None:
    """Rows sorted by cost, inner commands beneath their script."""
    rows = sorted(tally.top, key=lambda name: -tally.with_inner(name))
    print(f"\n{title}: {tally.total / per:.1f} commands {unit} (scripts' inner calls counted)")
    print(f"  {'command or script':<34} {'calls':>7} {'with inner':>11}")
    for name in rows:
        print(f"  {name:<34} {tally.top[name] / per:>7.2f} {tally.with_inner(name) / per:>11.2f}")
        for command, count in tally.inner.get(name, Counter()).most_common():
            print(f"    {'· ' + command:<32} {'':>7} {count / per:>11.2f}")


async def replies_to(twilio: FakeTwilio, results: list[dict], before: int, wait: float) -> None:
    """Poll until every 2xx-answered message of `results` has a reply after the first `before`
    messages (senders may have had replies before), or `wait` s after the last send."""
    expected = sum(1 for r in results if r["status"] and 200 <= r["status"] < 300)
    deadline = max((r["sent_at"] for r in results), default=time.time()) + wait
    while time.time() < deadline:
        if len(twilio.messages) - before >= expected:
            return
        await asyncio.sleep(0.05)


async def reads(redis: aioredis.Redis) -> int:
    return int((await redis.info("stats"))["total_reads_processed"])


async def measure(
    rate: float, seconds: float, idle: float, model_ms: float, workdir: Path, *, returning: bool
) -> None:
    scripts = script_names()
    async with bench.redis_url(workdir) as url:
        redis = connect(url, decode_responses=False)
        await redis.flushall()
        reply = Reply(text="ok", reasoning=None, delay=model_ms / 1000)
        async with (
            FakeOpenAI(models=["local-model"], default=reply) as model,
            FakeTwilio() as twilio,
        ):
            port = free_port()
            args, env = gateway_command(workdir, port, url, model, twilio, "all")
            log = workdir / "gateway.log"
            proc = await spawn(args, env, log)
            try:
                await wait_ready(proc, port, log)
                await asyncio.sleep(2)  # start-up writes (consumer groups, announcements) done
                idle_tally = Tally()
                watcher = await watching(url, idle_tally, scripts)
                pids = family(proc.pid)
                started, cpu_before = time.monotonic(), cpu_total(pids)
                await asyncio.sleep(idle)
                idle_seconds, cpu_after = time.monotonic() - started, cpu_total(pids)
                await unwatch(watcher)

                url_in = f"http://127.0.0.1:{port}/webhooks/whatsapp"
                if returning:  # every sender's first turn, unmeasured
                    first = await run_loadgen(
                        url_in, rate, seconds, twilio.auth_token, workdir / "first.json", log
                    )
                    await collect_replies(twilio, first, wait=15)
                before = len(twilio.messages)
                turn_tally = Tally()
                watcher = await watching(url, turn_tally, scripts)
                reads_before = await reads(redis)
                results = await run_loadgen(
                    url_in, rate, seconds, twilio.auth_token, workdir / "load.json", log
                )
                await replies_to(twilio, results, before, wait=15)
                await unwatch(watcher)
                trips = await reads(redis) - reads_before - 2  # the two INFOs
            finally:
                await stop(proc)
                await redis.aclose()
            measured = twilio.messages[before:]
            turns = sum(1 for m in measured if m.to.startswith(MEASURED_PREFIX))
    kind = "returning conversations' turns" if returning else "new conversations' first turns"
    print(f"gateway: bot serve --role all; {turns} plain WhatsApp turns at {rate:g}/s ({kind})")
    if not turns:
        raise SystemExit(f"no replies; see {log}")
    print(f"Redis round trips per turn (incl. background work): {trips / turns:.2f}")
    print_tally("per turn, under load", turn_tally, turns, "per turn")
    print_tally(f"idle, over {idle_seconds:.0f} s", idle_tally, idle_seconds, "per second")
    if cpu_before is not None and cpu_after is not None:
        share = (cpu_after - cpu_before) / idle_seconds * 100
        print(f"\nidle gateway CPU over {idle_seconds:.0f} s: {share:.2f} % of a core")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50, help="webhooks per second")
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--idle", type=float, default=10, help="seconds watched while idle")
    parser.add_argument("--model-ms", type=float, default=50)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    parser.add_argument(
        "--returning", action="store_true", help="measure each sender's second turn, not its first"
    )
    args = parser.parse_args()
    with bench.workdir("switchboard-turncost-", keep=args.keep) as workdir:
        run = measure(
            args.rate, args.seconds, args.idle, args.model_ms, workdir, returning=args.returning
        )
        bench.run(run)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
