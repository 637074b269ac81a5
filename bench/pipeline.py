"""Pipeline overhead: the gateway against a minimal relay under the same open-loop load.

For each rate, one `bot serve --role all` process and then `bench.relay` (each started fresh,
Redis flushed between runs) take `rate x seconds` signed WhatsApp webhooks, one per
conversation, sent open-loop by `bench.loadgen` in its own process. This process hosts only
the fakes: a model that answers "ok" after a fixed delay and a Twilio Messages API, whose
accept times (time.monotonic) are mapped to wall clock so they compare with the load
generator's time.time() send times. Everything listens on 127.0.0.1; Redis is REDIS_URL or an
embedded server.

Figures: ack latency = webhook answered - sent (load generator); end-to-end = Twilio accepted
the reply - webhook sent; replies/s = replies / (last reply - first send); a loss = no reply
within the wait after the last send. Redis commands per turn (gateway) = INFO commandstats
calls delta over the run (inside scripts too; INFO itself excluded, idle polling included)
/ replies; Redis round trips per turn = INFO stats total_reads_processed delta / replies.
Run: `.venv/bin/python -m bench.pipeline [--rates 100,300] [--seconds 6] [--model-ms 50]
[--repeat N]`; after each rate's runs it counts the runs that met issue #10's targets.
`--profile` attaches py-spy to the gateway and the relay for each load and prints where the
gateway's time went (the functions holding the most samples, inclusive and self), then both
targets' CPU per reply split by kind of work (logs, Redis, model call, Twilio...); the raw
stacks stay in the work dir.

Shapes past one process: `--procs N` runs the gateway's web side as `bot serve --procs N`
(`--role web` with `--workers M` worker processes beside it, else `--role all`), its
processes sharing one port; `--loadgen-procs K` splits the load over K load-generator
processes (rate/K each, interleaved, results merged) so the load is not the bottleneck;
`--cluster` starts a 3-node Redis Cluster (tests.helpers.redis_cluster) for the run.
`--no-relay` skips the relay runs (their column then repeats nothing useful).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

import bench
from bot.redisdb import EmbeddedRedis, connect
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.fakes.twilio_server import FakeTwilio
from tests.helpers import redis_cluster

ROOT = Path(__file__).resolve().parent.parent
SENDER = "whatsapp:+14155238886"
MEASURED_PREFIX = "whatsapp:+1555"  # bench.loadgen's measured From numbers
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@dataclass(frozen=True)
class Shape:
    """How the gateway and the load run: `procs` web (or all) processes under one
    `bot serve --procs`, `workers` worker processes, `loadgen_procs` load generators, and
    whether Redis is a cluster."""

    procs: int = 1
    workers: int = 0
    loadgen_procs: int = 1
    cluster: bool = False
    max_inflight: int | None = None  # BOT_MAX_INFLIGHT of the web processes
    typing: bool = True  # WhatsApp's typing indicator (a Twilio call a turn the relay lacks)

    def describe(self) -> str:
        role = "web" if self.workers else "all"
        web = f"`bot serve --role {role}" + (f" --procs {self.procs}`" if self.procs > 1 else "`")
        workers = f" + {self.workers} `--role worker`" if self.workers else ""
        redis = "3-node Redis Cluster" if self.cluster else "one Redis"
        limit = f", BOT_MAX_INFLIGHT={self.max_inflight}" if self.max_inflight else ""
        typing = "" if self.typing else ", typing indicator off"
        return f"{web}{workers}, {redis}, {self.loadgen_procs} load generator(s){limit}{typing}"


@dataclass
class RunResult:
    """What one target did at one rate."""

    sent: int
    answered: int  # 2xx
    acks_ms: list[float]
    e2e_ms: list[float]
    replies_per_s: float
    losses: int
    statuses: dict[str, int]
    redis_per_turn: tuple[float, float] | None = None  # round trips, commands
    cpu_ms_per_reply: float | None = None
    profile: Path | None = None  # py-spy's raw (folded) stacks of the target under load
    readyz: dict[str, int] | None = None  # /readyz answers sampled during the load


@dataclass
class Profiler:
    proc: asyncio.subprocess.Process
    output: Path


async def start_profiler(pid: int | None, output: Path) -> Profiler:
    """py-spy sampling `pid` until SIGTERM (it writes its folded stacks on the way out)."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None or pid is None:
        raise SystemExit("--profile needs py-spy (pip install py-spy; it is in the dev extras)")
    args = [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250"]
    args += ["--output", str(output), "--nonblocking"]
    with (output.parent / "py-spy.log").open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL
        )
    await asyncio.sleep(0.5)  # attached before the load starts
    return Profiler(proc, output)


def frame_name(frame: str) -> str:
    """'Agent.run_turn (bot/agent.py:75)' -> 'Agent.run_turn (agent.py)': one row per function."""
    function, _, where = frame.partition(" (")
    return f"{function} ({where.rpartition('/')[2].rpartition(':')[0]})" if where else function


def folded(stacks: Path) -> Iterator[tuple[str, int]]:
    """py-spy's raw output: each stack (frames joined by ';', outermost first), its samples."""
    for line in stacks.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if count_text.isdigit():  # else a frame name with a line break in it: skip the piece
            yield stack, int(count_text)


def print_profile(stacks: Path, top: int = 25) -> None:
    """The functions with the most samples in py-spy's folded stacks: inclusive and self %."""
    if not stacks.exists():
        print(f"  (no profile written; see {stacks.parent / 'py-spy.log'})")
        return
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for stack, count in folded(stacks):
        total += count
        frames = [frame_name(frame) for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    print(f"\n  profile: {total} samples ({stacks})")
    print(f"  {'inclusive %':>11} {'self %':>7}  function")
    for frame, count in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {100 * count / total:>11.1f} {100 * own.get(frame, 0) / total:>7.1f}  {frame}")
    print(f"  {'':>11} {'self %':>7}  (top self)")
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {'':>11} {100 * count / total:>7.1f}  {frame}")


# What each kind of work costs a reply: a sample goes to the first part whose rule matches a
# frame of its stack below the event loop's, so a log call made while committing counts as
# logs, Redis calls made by the webhook as Redis, the HTTP client under the model call as the
# model call.
# Each part: its name, the marks of its frames, and whether it is work a relay does without.
PARTS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("logs (structlog, sinks)", ("(structlog/", "(bot/logs.py"), True),
    ("metrics", ("(prometheus_client/", "(bot/metrics.py"), True),
    ("typing indicator", ("Worker._typing", ".typing (channels/"), True),
    ("Redis (redis-py and the scripts' callers)", ("(redis/",), True),
    ("model call (openai SDK, HTTP, stream)", ("(openai/", "(httpx2/"), False),
    ("Twilio send (twilio SDK, HTTP)", ("(twilio/",), False),
    ("webhook: parse, verify, answer (aiohttp server)", ("(aiohttp/web_",), False),
    ("the gateway's own code, the rest", ("(bot/", "(channels/"), True),
)
OTHER_PART = "event loop, tasks and the rest"


def profile_parts(stacks: Path) -> dict[str, float]:
    """The share of py-spy's samples (on-CPU: idle is not sampled) that each of PARTS holds."""
    counts: dict[str, int] = {}
    total = 0
    for stack, count in folded(stacks):
        total += count
        below = stack.rpartition("Runner.run (")[2]  # not the process's own start-up frames
        part = next(
            (name for name, marks, _ in PARTS if any(mark in below for mark in marks)),
            OTHER_PART,
        )
        counts[part] = counts.get(part, 0) + count
    return {part: count / total for part, count in counts.items()} if total else {}


def print_parts(gateway: RunResult, relay: RunResult) -> None:
    """CPU ms per reply by kind of work, gateway against relay: the profile's shares of each
    run's measured CPU per reply (the profiler's own cost is in both)."""
    rows: list[tuple[str, float, float, bool]] = []
    shares = [
        profile_parts(r.profile) if r.profile is not None and r.profile.exists() else {}
        for r in (gateway, relay)
    ]
    cpu = [r.cpu_ms_per_reply or 0.0 for r in (gateway, relay)]
    for part, extra in [(name, extra) for name, _, extra in PARTS] + [(OTHER_PART, False)]:
        gw, rl = (share.get(part, 0.0) * ms for share, ms in zip(shares, cpu, strict=True))
        rows.append((part, gw, rl, extra))
    print("\n  CPU ms per reply by kind of work (py-spy samples x the run's CPU per reply)")
    print(f"  {'':<50} {'gateway':>8} {'relay':>8} {'diff':>8}")
    for part, gw, rl, _ in rows:
        print(f"  {part:<50} {gw:>8.2f} {rl:>8.2f} {gw - rl:>+8.2f}")
    print(f"  {'total':<50} {cpu[0]:>8.2f} {cpu[1]:>8.2f} {cpu[0] - cpu[1]:>+8.2f}")
    extras = sum(gw for _, gw, _, extra in rows if extra)
    print(f"  the gateway's extras (the parts a relay does without): {extras:.2f} ms a reply; "
          f"1.15x the relay leaves {0.15 * cpu[1]:.2f} ms over the relay's own total")  # fmt: skip


# -- processes ---------------------------------------------------------------------------------


async def spawn(args: list[str], env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    """A child process of this Python, its output appended to `log`."""
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, *args, env=env, cwd=ROOT, stdout=out, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip


async def stop(proc: asyncio.subprocess.Process, grace: float = 10) -> int:
    """SIGTERM, then SIGKILL after `grace` seconds; the exit code."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                return await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    return await proc.wait()


async def wait_ready(proc: asyncio.subprocess.Process, port: int, log: Path) -> None:
    """Poll GET /readyz until 200; fail if the process exits or START_TIMEOUT passes."""
    deadline = time.monotonic() + START_TIMEOUT
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise SystemExit(f"process exited with {proc.returncode}; see {log}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise SystemExit(f"process on port {port} not ready after {START_TIMEOUT:.0f} s; see {log}")


def listening(log: Path) -> int:
    """How many processes logged server_started with a URL (the listening ones) in `log`."""
    count = 0
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                count += event.get("event") == "server_started" and "url" in event
    return count


async def wait_listening(proc: asyncio.subprocess.Process, count: int, log: Path) -> None:
    """Until `count` processes listen (`bot serve --procs N`: every child, not just one)."""
    deadline = time.monotonic() + START_TIMEOUT
    while listening(log) < count:
        if proc.returncode is not None:
            raise SystemExit(f"process exited with {proc.returncode}; see {log}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{listening(log)} of {count} processes listening; see {log}")
        await asyncio.sleep(0.1)


MAX_CONCURRENT = 64  # agents.defaults.maxConcurrent: 8 (the default) caps a worker near 130 turns/s


def gateway_command(
    workdir: Path,
    port: int,
    redis_url: str,
    model: FakeOpenAI,
    twilio: FakeTwilio,
    role: str,
    procs: int = 1,
    cluster: bool = False,
    max_inflight: int | None = None,
    typing: bool = True,
) -> tuple[list[str], dict[str, str]]:
    """`bot serve --role ROLE [--procs N]` and its environment, pointed at the fakes."""
    env = bench.gateway_env(
        workdir, port=port, redis_url=redis_url, model_url=model.base_url, twilio=twilio,
        sender=SENDER, data_dir=workdir / f"var-{port}", max_concurrent=MAX_CONCURRENT,
        typing=typing,
    )  # fmt: skip
    if cluster:
        env["REDIS_CLUSTER"] = "true"
    if max_inflight:
        env["BOT_MAX_INFLIGHT"] = str(max_inflight)
    args = ["-m", "bot", "serve", "--role", role]
    return [*args, "--procs", str(procs)] if procs > 1 else args, env


def relay_command(
    workdir: Path, port: int, model: FakeOpenAI, twilio: FakeTwilio
) -> tuple[list[str], dict[str, str]]:
    """`bench.relay` and its environment, pointed at the fakes."""
    args = [
        "-m", "bench.relay", "--port", str(port), "--public-url", f"http://127.0.0.1:{port}",
        "--model-url", model.base_url, "--model", "local-model", "--twilio-url", twilio.base_url,
        "--account-sid", twilio.account_sid, "--auth-token", twilio.auth_token,
        "--sender", SENDER,
    ]  # fmt: skip
    return args, {"PATH": os.environ["PATH"], "HOME": str(workdir)}


# -- measuring ---------------------------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time a process has used so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (OSError, TypeError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def family(pid: int) -> list[int]:
    """`pid` and its descendants now (Linux /proc; `bot serve --procs N` has children)."""
    pids = [pid]
    for parent in pids:  # grows while it is walked: breadth first
        with contextlib.suppress(OSError):
            text = Path(f"/proc/{parent}/task/{parent}/children").read_text()
            pids.extend(int(child) for child in text.split())
    return pids


def cpu_total(pids: list[int]) -> float | None:
    """The CPU seconds of all `pids`, or None if one cannot be read."""
    readings = [cpu_seconds(pid) for pid in pids]
    return None if None in readings else sum(r for r in readings if r is not None)


async def redis_counts(redis: aioredis.Redis) -> tuple[int, int]:
    """(round trips, commands) Redis has served so far: socket reads it processed (a pipeline
    arrives in one) and commands including those run inside scripts (INFO excluded); on a
    Redis Cluster (INFO answered per node) summed over the nodes."""
    stats, commands = await redis.info("stats"), await redis.info("commandstats")
    per_node = "total_reads_processed" not in stats
    all_stats = list(stats.values()) if per_node else [stats]
    all_commands = list(commands.values()) if per_node else [commands]
    calls = sum(
        int(v["calls"])
        for node in all_commands
        for name, v in node.items()
        if name != "cmdstat_info"
    )
    return sum(int(node["total_reads_processed"]) for node in all_stats), calls


async def run_loadgen(
    url: str, rate: float, seconds: float, token: str, out: Path, log: Path, procs: int = 1
) -> list[dict]:
    """Run bench.loadgen in `procs` processes (rate/procs each, interleaved, one start time)
    to completion (bounded) and return their per-message results, merged."""
    total = round(rate * seconds)
    start_at = time.time() + 3 + total / 5000  # python start-up and signing, all processes
    running = []
    for k in range(procs):
        part = out.with_name(f"{out.stem}-{k}{out.suffix}")
        args = ["-m", "bench.loadgen", "--url", url, "--rate", str(rate / procs)]
        args += ["--seconds", str(seconds), "--token", token, "--out", str(part)]
        args += ["--first", str(k * total), "--start-at", str(start_at), "--phase", str(k / rate)]
        running.append((part, await spawn(args, {"PATH": os.environ["PATH"]}, log)))
    results: list[dict] = []
    try:
        async with asyncio.timeout(seconds + 60):
            codes = [await proc.wait() for _, proc in running]
    finally:
        for _, proc in running:
            await stop(proc, grace=2)
    for (part, _), code in zip(running, codes, strict=True):
        results += read_results(part, code, log)
    return results


def read_results(out: Path, code: int, log: Path) -> list[dict]:
    """The load generator's per-message results, or exit if it failed."""
    if code != 0 or not out.exists():
        raise SystemExit(f"the load generator failed ({code}); see {log}")
    payload = json.loads(out.read_text())
    if payload.get("late", 0) > 0.05:
        print(f"  (a load generator started {payload['late']:.2f} s late: its sends bunched up)")
    results: list[dict] = payload["results"]
    return results


async def collect_replies(twilio: FakeTwilio, results: list[dict], wait: float) -> None:
    """Poll until every 2xx-answered message has a reply, or `wait` s after the last send."""
    expected = {r["from"] for r in results if r["status"] and 200 <= r["status"] < 300}
    last_sent = max((r["sent_at"] for r in results), default=time.time())
    deadline = last_sent + wait
    while time.time() < deadline:
        if expected <= {m.to for m in twilio.messages}:
            return
        await asyncio.sleep(0.05)


def summarise(results: list[dict], twilio: FakeTwilio, offset: float, wait: float) -> RunResult:
    """Per-message figures: ack and end-to-end latency, throughput, losses."""
    cutoff = max(r["sent_at"] for r in results) + wait
    first_reply: dict[str, float] = {}
    for message in twilio.messages:  # appended in accept order: the first is the earliest
        if message.to.startswith(MEASURED_PREFIX):
            first_reply.setdefault(message.to, message.at + offset)
    statuses: dict[str, int] = {}
    acks, e2e = [], []
    for r in results:
        key = str(r["status"]) if r["status"] is not None else "no answer"
        statuses[key] = statuses.get(key, 0) + 1
        if r["status"] and 200 <= r["status"] < 300:
            acks.append((r["acked_at"] - r["sent_at"]) * 1000)
        replied = first_reply.get(r["from"])
        if replied is not None and replied <= cutoff:
            e2e.append((replied - r["sent_at"]) * 1000)
    first_sent = min(r["sent_at"] for r in results)
    span = (max(first_reply.values()) - first_sent) if first_reply else 0.0
    return RunResult(
        sent=len(results),
        answered=len(acks),
        acks_ms=acks,
        e2e_ms=e2e,
        replies_per_s=len(first_reply) / span if span > 0 else 0.0,
        losses=len(results) - len(e2e),
        statuses=statuses,
    )


async def sample_readyz(port: int, seen: dict[str, int], every: float = 0.1) -> None:
    """GET /readyz every `every` s until cancelled, counting the answers (200, 503 busy...)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        while True:
            try:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                    body = await response.json()
                    key = str(response.status)
                    if response.status != 200:
                        key += " " + ",".join(k for k, v in body["checks"].items() if v != "ok")
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
                key = "no answer"
            seen[key] = seen.get(key, 0) + 1
            await asyncio.sleep(every)


async def run_target(
    target: str,
    rate: float,
    seconds: float,
    model_ms: float,
    redis: aioredis.Redis,
    redis_url: str,
    workdir: Path,
    wait: float,
    profile: bool = False,
    shape: Shape = Shape(),
) -> RunResult:
    """Fresh fakes and a fresh target process (the gateway in `shape`: `--role all`, or with
    workers `--role web` and that many `--role worker` processes; `--procs` when more than
    one); one open-loop load; the figures (CPU: all of the target's processes)."""
    await redis.flushall()
    reply = Reply(text="ok", reasoning=None, delay=model_ms / 1000)
    log = workdir / f"{target}-{rate:g}.log"
    log.unlink(missing_ok=True)
    async with FakeOpenAI(models=["local-model"], default=reply) as model, FakeTwilio() as twilio:
        offset = time.time() - time.monotonic()
        port = free_port()
        extra: list[asyncio.subprocess.Process] = []
        listeners = 1
        if target == "gateway":
            role = "web" if shape.workers else "all"
            args, env = gateway_command(
                workdir,
                port,
                redis_url,
                model,
                twilio,
                role,
                shape.procs,
                shape.cluster,
                shape.max_inflight,
                shape.typing,
            )
            listeners = shape.procs
            for _ in range(shape.workers):
                worker_args, worker_env = gateway_command(
                    workdir, free_port(), redis_url, model, twilio, "worker", 1, shape.cluster,
                    typing=shape.typing,
                )  # fmt: skip
                extra.append(await spawn(worker_args, worker_env, log))
        else:
            args, env = relay_command(workdir, port, model, twilio)
        proc = await spawn(args, env, log)
        profiler = None
        readyz: dict[str, int] = {}
        try:
            await wait_ready(proc, port, log)
            if target == "gateway":
                await wait_listening(proc, listeners, log)
            await asyncio.sleep(0.5)  # let a worker join its consumer group
            pids = [pid for p in (proc, *extra) for pid in family(p.pid)]
            before = await redis_counts(redis)
            cpu_before = cpu_total(pids)
            url = f"http://127.0.0.1:{port}/webhooks/whatsapp"
            out = workdir / f"{target}-{rate:g}.json"
            if profile:
                profiler = await start_profiler(proc.pid, workdir / f"{target}-{rate:g}.stacks")
            sampler = asyncio.create_task(sample_readyz(port, readyz))
            try:
                results = await run_loadgen(
                    url, rate, seconds, twilio.auth_token, out, log, shape.loadgen_procs
                )
            finally:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            if profiler is not None:
                profiler.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(30):
                        await profiler.proc.wait()
                await stop(profiler.proc)
            await collect_replies(twilio, results, wait)
            after = await redis_counts(redis)
            cpu_after = cpu_total(pids)
        finally:
            code = await stop(proc)
            for worker in extra:
                await stop(worker)
        summary = summarise(results, twilio, offset, wait)
        summary.readyz = readyz
        if cpu_before is not None and cpu_after is not None and summary.e2e_ms:
            summary.cpu_ms_per_reply = (cpu_after - cpu_before) * 1000 / len(summary.e2e_ms)
        if target == "gateway" and summary.e2e_ms:
            turns = len(summary.e2e_ms)
            summary.redis_per_turn = (
                (after[0] - before[0]) / turns,
                (after[1] - before[1]) / turns,
            )
        if profiler is not None:
            summary.profile = profiler.output
        if code not in (0, -signal.SIGTERM):
            print(f"  ({target} exited with {code}; see {log})")
        return summary


# -- report ------------------------------------------------------------------------------------


def optional(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "-"


def print_table(
    rate: float, seconds: float, model_ms: float, gw: RunResult, rl: RunResult, wait: float
) -> None:
    """One table: gateway, relay, and how they compare."""
    total = round(rate * seconds)
    p = percentile
    head = f"rate {rate:g}/s, {seconds:g} s ({total} webhooks), model {model_ms:g} ms"
    print(f"\n{head:<58}{'gateway':>13} {'relay':>13}   ratio / diff")
    rows = [
        (
            "webhooks sent / answered 2xx",
            f"{gw.sent}/{gw.answered}",
            f"{rl.sent}/{rl.answered}",
            "",
        ),
        (
            "ack latency p50 / p99 (ms)",
            f"{p(gw.acks_ms, 50):.1f}/{p(gw.acks_ms, 99):.1f}",
            f"{p(rl.acks_ms, 50):.1f}/{p(rl.acks_ms, 99):.1f}",
            f"{ratio(p(gw.acks_ms, 50), p(rl.acks_ms, 50))}/"
            f"{ratio(p(gw.acks_ms, 99), p(rl.acks_ms, 99))}",
        ),
        (
            "end-to-end p50 / p99 (ms)",
            f"{p(gw.e2e_ms, 50):.0f}/{p(gw.e2e_ms, 99):.0f}",
            f"{p(rl.e2e_ms, 50):.0f}/{p(rl.e2e_ms, 99):.0f}",
            f"{p(gw.e2e_ms, 50) - p(rl.e2e_ms, 50):+.0f} ms/"
            f"{p(gw.e2e_ms, 99) - p(rl.e2e_ms, 99):+.0f} ms",
        ),
        (
            "replies/s = replies / (last reply - first send)",
            f"{gw.replies_per_s:.0f}",
            f"{rl.replies_per_s:.0f}",
            ratio(gw.replies_per_s, rl.replies_per_s),
        ),
        (f"losses (no reply within {wait:g} s of last send)", str(gw.losses), str(rl.losses), ""),
        (
            "CPU ms per reply (the target process, user + system)",
            optional(gw.cpu_ms_per_reply),
            optional(rl.cpu_ms_per_reply),
            ratio(gw.cpu_ms_per_reply or 0, rl.cpu_ms_per_reply or 0),
        ),
    ]
    for label, a, b, c in rows:
        print(f"  {label:<56}{a:>13} {b:>13}   {c}")
    if gw.redis_per_turn is not None:
        trips, commands = gw.redis_per_turn
        print(f"  {'Redis round trips / commands per turn (incl. idle)':<56}"
              f"{f'{trips:.1f} / {commands:.1f}':>13}")  # fmt: skip
    odd = {k: v for k, v in gw.statuses.items() if k != "200"}
    odd_relay = {k: v for k, v in rl.statuses.items() if k != "200"}
    if odd or odd_relay:
        print(f"  non-200 answers: gateway {odd or '-'}, relay {odd_relay or '-'}")


def targets(gw: RunResult, rl: RunResult) -> dict[str, bool]:
    """Issue #10's targets for one run (they are set for 300/s)."""
    p = percentile
    return {
        "ack p99 <= 20 ms": p(gw.acks_ms, 99) <= 20,
        "end-to-end p50 <= relay + 25 ms": p(gw.e2e_ms, 50) <= p(rl.e2e_ms, 50) + 25,
        "replies/s >= 0.5 x relay, no loss": gw.replies_per_s >= 0.5 * rl.replies_per_s
        and gw.losses == 0,
    }


def print_targets(rate: float, runs: list[dict[str, bool]]) -> None:
    """How many runs met each target, and all three at once."""
    print(f"\ntargets at {rate:g}/s over {len(runs)} run(s) (each: gateway, then relay):")
    for name in runs[0]:
        print(f"  {name:<40} met in {sum(r[name] for r in runs)} of {len(runs)}")
    print(f"  {'all three':<40} met in {sum(all(r.values()) for r in runs)} of {len(runs)}")


def print_scaling(rate: float, seconds: float, rows: list[tuple[Shape, RunResult]]) -> None:
    """One row per shape at one rate, and each one's replies/s against the first's."""
    p = percentile
    print(f"\nrate {rate:g}/s for {seconds:g} s ({round(rate * seconds)} webhooks)")
    head = (f"  {'shape':<80} {'replies/s':>9} {'x first':>7} {'ack p50/p99 ms':>15} "
            f"{'e2e p50 ms':>10} {'lost':>5} {'CPU ms/reply':>12}  "
            "non-200 / readyz samples")  # fmt: skip
    print(head)
    base = rows[0][1].replies_per_s
    for shape, r in rows:
        odd = {k: v for k, v in r.statuses.items() if k != "200"} or "-"
        acks = f"{p(r.acks_ms, 50):.1f}/{p(r.acks_ms, 99):.1f}"
        print(f"  {shape.describe():<80} {r.replies_per_s:>9.0f} {ratio(r.replies_per_s, base):>7} "
              f"{acks:>15} {p(r.e2e_ms, 50):>10.0f} {r.losses:>5} "
              f"{optional(r.cpu_ms_per_reply):>12}  {odd} / {r.readyz}")  # fmt: skip


async def run(
    rates: list[float],
    seconds: float,
    model_ms: float,
    wait: float,
    workdir: Path,
    profile: bool,
    repeat: int = 1,
    shapes: tuple[Shape, ...] = (Shape(),),
    relay: bool = True,
) -> None:
    cluster = shapes[0].cluster
    with contextlib.ExitStack() as stack:
        redis_url = os.environ.get("REDIS_URL")
        embedded = None
        if cluster:
            redis_url = stack.enter_context(redis_cluster(Path(tempfile.mkdtemp(dir=workdir))))
        elif not redis_url:
            embedded = EmbeddedRedis(workdir)
            await embedded.start()
            redis_url = embedded.url
        cluster = cluster or os.environ.get("REDIS_CLUSTER", "").lower() in ("1", "true", "yes")
        redis = connect(redis_url, cluster=cluster, decode_responses=False, socket_timeout=10)
        try:
            await measure(rates, seconds, model_ms, wait, workdir, profile, repeat, shapes,
                          relay, redis, redis_url)  # fmt: skip
        finally:
            await redis.aclose()
            if embedded is not None:
                await embedded.stop()


async def measure(
    rates: list[float], seconds: float, model_ms: float, wait: float, workdir: Path,
    profile: bool, repeat: int, shapes: tuple[Shape, ...], relay: bool, redis: aioredis.Redis,
    redis_url: str,
) -> None:  # fmt: skip
    """Several shapes: one scaling table per rate (and run); one shape: against the relay."""
    if len(shapes) > 1 or not relay:
        print("gateway shapes, each run fresh, one after the other at the same rate:")
        for rate in rates:
            for _ in range(repeat):
                rows = []
                for shape in shapes:
                    result = await run_target(
                        "gateway", rate, seconds, model_ms, redis, redis_url, workdir, wait,
                        profile, shape,
                    )  # fmt: skip
                    rows.append((shape, result))
                print_scaling(rate, seconds, rows)
        return
    [shape] = shapes
    print(f"gateway: {shape.describe()}; relay: bench.relay, one process")
    for rate in rates:
        met = []
        for _ in range(repeat):
            gw = await run_target(
                "gateway", rate, seconds, model_ms, redis, redis_url, workdir, wait, profile,
                shape,
            )  # fmt: skip
            rl = await run_target(
                "relay", rate, seconds, model_ms, redis, redis_url, workdir, wait, profile,
                shape=Shape(loadgen_procs=shape.loadgen_procs),
            )  # fmt: skip
            print_table(rate, seconds, model_ms, gw, rl, wait)
            if gw.readyz:
                print(f"  gateway /readyz sampled during the load: {gw.readyz}")
            if gw.profile is not None:
                print_profile(gw.profile)
                print_parts(gw, rl)
            met.append(targets(gw, rl))
        print_targets(rate, met)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="100,300", help="webhooks per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--model-ms", type=float, default=50)
    parser.add_argument("--wait", type=float, default=15, help="reply wait after the last send")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, results)")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the gateway and the relay under load"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per rate (the machine is noisy)"
    )
    parser.add_argument(
        "--workers", type=int, default=0,
        help="run the gateway as --role web and N --role worker processes",
    )  # fmt: skip
    parser.add_argument(
        "--procs", default="1",
        help="web (or all) processes under one `bot serve --procs N`; a comma list (1,2,4) "
        "compares the shapes in one scaling table",
    )  # fmt: skip
    parser.add_argument(
        "--loadgen-procs", type=int, default=1, help="load-generator processes (rate/K each)"
    )
    parser.add_argument("--cluster", action="store_true", help="run on a 3-node Redis Cluster")
    parser.add_argument("--no-relay", action="store_true", help="skip the relay runs")
    parser.add_argument(
        "--max-inflight", type=int, help="BOT_MAX_INFLIGHT of the gateway (overload runs)"
    )
    parser.add_argument(
        "--no-typing",
        action="store_true",
        help="channels.whatsapp.typingIndicator: false (the relay sends no typing indicator)",
    )
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    shapes = tuple(
        Shape(procs=int(n), workers=args.workers, loadgen_procs=args.loadgen_procs,
              cluster=args.cluster, max_inflight=args.max_inflight, typing=not args.no_typing)
        for n in args.procs.split(",") if n.strip()
    )  # fmt: skip
    with bench.workdir("switchboard-pipeline-", keep=args.keep or args.profile) as workdir:
        bench.run(
            run(rates, args.seconds, args.model_ms, args.wait, workdir, args.profile, args.repeat,
                shapes, not args.no_relay)
        )  # fmt: skip


if __name__ == "__main__":
    main()
