"""Reminders at scale: 10,000 due at once, fired while ordinary turns keep coming.

One `bot serve --role all` (WhatsApp, fake Twilio and a model answering "ok" after a fixed
delay, as in bench.pipeline). The reminders are seeded through the store (bot.reminders),
spread over many conversations, all due at one instant a little after seeding ends; an
open-loop load of ordinary WhatsApp turns (a new conversation each) runs from the end of
seeding until every reminder is out. This process hosts the fakes and sends the load (20/s is
light next to the 10,000 messages the fake Twilio records).

Figures: reminders delivered per second = reminders / (last one accepted by Twilio - due
time); the first one's delay after the due time; exactly once = each reminder's text accepted
once (none missing, none twice); ordinary turns' end-to-end (Twilio accepted the reply -
webhook sent) p50/p95 for turns sent before the due time (no reminders) and for turns sent
while reminders were firing (due time to last reminder out); the gateway's logged failures
(each retried: a failed firing is claimed again once its hold lapses, a crashed turn is
reclaimed).
Run: `.venv/bin/python -m bench.reminders [--reminders 10000] [--conversations 2000]
[--rate 20] [--model-ms 50] [--baseline 15]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

import bench
from bench.pipeline import free_port, gateway_command, percentile, spawn, stop, wait_ready
from bot.redisdb import connect
from bot.reminders import RedisReminders
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.fakes.twilio_server import FakeTwilio, signed_form, whatsapp_inbound

SENDER = "whatsapp:+14155238886"
TURN_PREFIX = "whatsapp:+1555"  # the ordinary turns' From numbers (one conversation each)
REMINDER_PREFIX = "whatsapp:+1777"  # the conversations holding reminders
TEXT = re.compile(r"bench reminder (\d+)\b")
SEED_CONCURRENCY = 64
DRAIN_LIMIT = 300.0  # seconds after the due time by which every reminder must be out


@dataclass
class Load:
    """Ordinary turns sent open-loop: each From and its send time (time.monotonic())."""

    sent: dict[str, float] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)


async def seed(url: str, reminders: int, conversations: int, due: datetime) -> float:
    """`reminders` reminders due at `due`, round-robin over `conversations` conversations,
    set through the store as `/remind` sets them; the seconds it took."""
    started = time.monotonic()
    redis = connect(url)
    store = RedisReminders(redis, limit=0)  # no per-sender limit: a bench, not a person
    gate = asyncio.Semaphore(SEED_CONCURRENCY)

    async def one(n: int) -> None:
        conversation = f"{REMINDER_PREFIX}{n % conversations:07d}"
        async with gate:
            await store.add(
                channel="whatsapp",
                conversation=conversation,
                sender=conversation,
                text=f"bench reminder {n}",
                due=due,
                zone="UTC",
            )

    try:
        await asyncio.gather(*(one(n) for n in range(reminders)))
    finally:
        await redis.aclose()
    return time.monotonic() - started


async def send_load(url: str, token: str, rate: float, load: Load, stop: asyncio.Event) -> None:
    """One signed webhook every 1/rate s (each a new conversation) until `stop` is set."""
    tasks: set[asyncio.Task[None]] = set()

    async def post(http: aiohttp.ClientSession, n: int) -> None:
        phone = f"{TURN_PREFIX}{n:07d}"
        fields = whatsapp_inbound(from_=phone, to=SENDER, body=f"hello {n}")
        body, headers = signed_form(token, url, fields)
        load.sent[phone] = time.monotonic()
        try:
            async with http.post(url, data=body, headers=headers) as response:
                await response.read()
                load.statuses[str(response.status)] += 1
        except (aiohttp.ClientError, TimeoutError):
            load.statuses["no answer"] += 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        start = time.monotonic()
        n = 0
        while not stop.is_set():
            task = asyncio.create_task(post(http, n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), start + n / rate - time.monotonic())
        if tasks:
            await asyncio.wait(tasks, timeout=35)


async def wait_for(condition: Callable[[], bool], limit: float) -> bool:
    """Poll `condition()` every 50 ms until true or `limit` seconds pass."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.05)
    return False


async def run(args: argparse.Namespace, workdir: Path) -> None:
    reply = Reply(text="ok", reasoning=None, delay=args.model_ms / 1000)
    async with (
        bench.redis_url(workdir) as redis_url,
        FakeOpenAI(models=["local-model"], default=reply) as model,
        FakeTwilio() as twilio,
    ):
        redis = connect(redis_url)
        await redis.flushall()
        await redis.aclose()
        port = free_port()
        command, env = gateway_command(workdir, port, redis_url, model, twilio, "all")
        log = workdir / "gateway.log"
        proc = await spawn(command, env, log)
        try:
            await wait_ready(proc, port, log)
            await asyncio.sleep(0.5)  # let the worker join its consumer group
            due_at = time.time() + args.seed_allowance + args.baseline
            seeded_in = await seed(
                redis_url, args.reminders, args.conversations, datetime.fromtimestamp(due_at, UTC)
            )
            due_mono = due_at - (time.time() - time.monotonic())
            url = f"http://127.0.0.1:{port}/webhooks/whatsapp"
            load, stop_load = Load(), asyncio.Event()
            load_started = time.monotonic()
            sender = asyncio.create_task(
                send_load(url, twilio.auth_token, args.rate, load, stop_load)
            )

            def reminders_out() -> int:
                return sum(1 for m in twilio.messages if m.to.startswith(REMINDER_PREFIX))

            drained = await wait_for(
                lambda: reminders_out() >= args.reminders,
                max(0.0, due_mono - time.monotonic()) + DRAIN_LIMIT,
            )
            stop_load.set()
            await sender
            await wait_for(lambda: set(load.sent) <= {m.to for m in twilio.messages}, limit=30)
            await asyncio.sleep(2)  # a duplicate would show up here
        finally:
            code = await stop(proc)
    if code not in (0, -15):
        print(f"(the gateway exited with {code}; see {log})")
    report(args, twilio, load, due_mono, load_started, seeded_in, drained, problems(log))


PROBLEMS = ("reminder_failed", "turn_crashed", "usage_not_recorded", "send_failed")


def problems(log: Path) -> str:
    """How often the gateway logged each event that says something went wrong (and was
    retried, or not), with the most frequent error text."""
    events: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if event.get("event") in PROBLEMS:
                events[event["event"]] += 1
                errors[str(event.get("error", ""))[:60]] += 1
    if not events:
        return "none"
    worst = f" (mostly {errors.most_common(1)[0][0]!r})" if errors else ""
    return ", ".join(f"{k} {v}" for k, v in events.most_common()) + worst


def report(
    args: argparse.Namespace,
    twilio: FakeTwilio,
    load: Load,
    due: float,
    load_started: float,
    seeded_in: float,
    drained: bool,
    logged: str,
) -> None:
    """The table: reminders' drain rate and exactly-once, turns' latency before and during."""
    counts: Counter[int] = Counter()
    reminder_times = []
    replied: dict[str, float] = {}
    for message in twilio.messages:
        if message.to.startswith(REMINDER_PREFIX):
            found = TEXT.search(message.body or "")
            if found:
                counts[int(found[1])] += 1
                reminder_times.append(message.at)
        elif message.to.startswith(TURN_PREFIX):
            replied.setdefault(message.to, message.at)
    missing = sum(1 for n in range(args.reminders) if counts[n] == 0)
    twice = sum(1 for c in counts.values() if c > 1)
    last = max(reminder_times, default=due)
    first = min(reminder_times, default=due)
    span = last - due

    def window(lo: float, hi: float) -> tuple[list[float], int]:
        sent = {k: v for k, v in load.sent.items() if lo <= v < hi}
        e2e = [(replied[k] - v) * 1000 for k, v in sent.items() if k in replied]
        return e2e, len(sent) - len(e2e)

    before, lost_before = window(load_started, due)
    during, lost_during = window(due, last)
    print(
        f"\n{args.reminders:,} reminders over {args.conversations:,} conversations, all due at "
        f"once; `bot serve --role all`; turns at {args.rate:g}/s, model {args.model_ms:g} ms"
    )
    print(f"(seeded through the store in {seeded_in:.1f} s)")
    rows = [
        ("reminders delivered", f"{len(reminder_times):,} of {args.reminders:,}"),
        ("first out after due", f"{(first - due) * 1000:.0f} ms"),
        ("all out after due", f"{span:.1f} s" + ("" if drained else " (not drained)")),
        ("reminders delivered/s", f"{len(reminder_times) / span:,.0f}" if span > 0 else "-"),
        ("exactly once", f"{missing} missing, {twice} twice"),
        (
            "turns without reminders",
            f"{len(before)} · p50 {percentile(before, 50):.0f} ms · "
            f"p95 {percentile(before, 95):.0f} ms · {lost_before} lost",
        ),
        (
            "turns while reminders fire",
            f"{len(during)} · p50 {percentile(during, 50):.0f} ms · "
            f"p95 {percentile(during, 95):.0f} ms · {lost_during} lost",
        ),
        ("gateway logged", logged),
        ("webhook answers", ", ".join(f"{k}: {v}" for k, v in sorted(load.statuses.items()))),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"| {'':<{width}} | |\n|{'-' * (width + 2)}|---|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reminders", type=int, default=10_000)
    parser.add_argument("--conversations", type=int, default=2_000)
    parser.add_argument("--rate", type=float, default=20, help="ordinary turns per second")
    parser.add_argument("--model-ms", type=float, default=50)
    parser.add_argument("--baseline", type=float, default=15, help="seconds of load before due")
    parser.add_argument(
        "--seed-allowance", type=float, default=15, help="seconds allowed for seeding"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    args = parser.parse_args()
    with bench.workdir("bench-reminders-", keep=args.keep) as workdir:
        bench.run(run(args, workdir))


if __name__ == "__main__":
    main()
