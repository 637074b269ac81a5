"""Scale-out check: one web process and three workers take 50 conversations x 10 WhatsApp
messages posted concurrently, with one worker killed by SIGKILL mid-run.

Prints messages, wall time, ack latency, duplicates, losses and order violations. Everything
runs on this machine: real Redis (REDIS_URL, else an embedded server), `bot serve` processes,
an in-process fake model (echoes, 20-80 ms) and a fake Twilio Messages API.
Run: `make bench` or `.venv/bin/python -m bench.scaleout [--conversations N --messages M]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import socket
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import aiohttp

import bench
from bot.redisdb import EmbeddedRedis
from tests.fakes.openai_server import FakeOpenAI, Recorded, Reply
from tests.fakes.twilio_server import FakeTwilio, signed_form, whatsapp_inbound
from tests.helpers import eventually

ROOT = Path(__file__).resolve().parent.parent
SENDER = "whatsapp:+14155238886"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def echo(request: Recorded) -> Reply:
    last = request.turn_texts[-1]
    return Reply(text=f"echo:{last}", delay=random.uniform(0.02, 0.08))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def spawn(role: str, env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "serve", "--role", role, env=env, cwd=ROOT,
        stdout=log.open("ab"), stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip


async def run(conversations: int, messages: int, workdir: Path) -> None:
    redis_url = os.environ.get("REDIS_URL")
    embedded = None
    if not redis_url:
        embedded = EmbeddedRedis(workdir)
        await embedded.start()
        redis_url = embedded.url
    port = free_port()
    async with FakeOpenAI(models=["local-model"], default=echo) as model, FakeTwilio() as twilio:
        env = bench.gateway_env(
            workdir, port=port, redis_url=redis_url, model_url=model.base_url, twilio=twilio,
            sender=SENDER, data_dir=workdir / "var", lease_seconds=2,
        )  # fmt: skip
        logs = workdir / "processes.log"
        web = await spawn("web", env, logs)
        workers = [await spawn("worker", env, logs) for _ in range(3)]
        url = f"http://127.0.0.1:{port}/webhooks/whatsapp"
        acks: list[float] = []
        statuses: dict[int, int] = defaultdict(int)
        try:
            async with aiohttp.ClientSession() as http:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/readyz") as ready:
                            if ready.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    if time.monotonic() > deadline:
                        raise SystemExit(f"the web process did not start; see {logs}")
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1.0)  # let the workers join the consumer group

                async def person(n: int) -> None:
                    phone = f"whatsapp:+1555{n:07d}"
                    for m in range(messages):
                        fields = whatsapp_inbound(from_=phone, to=SENDER, body=f"{n}#{m}")
                        body, headers = signed_form(twilio.auth_token, url, fields)
                        while True:  # like Twilio: retry until the gateway answers 2xx
                            started = time.perf_counter()
                            async with http.post(url, data=body, headers=headers) as response:
                                statuses[response.status] += 1
                                if response.status == 200:
                                    acks.append((time.perf_counter() - started) * 1000)
                                    break
                            await asyncio.sleep(0.1)
                        await asyncio.sleep(random.uniform(0, 0.05))

                total = conversations * messages
                started = time.perf_counter()
                posting = asyncio.gather(*(person(n) for n in range(conversations)))
                await eventually(lambda: len(acks) >= total // 3, within=60)
                workers[0].send_signal(signal.SIGKILL)
                killed_at = time.perf_counter() - started
                await posting
                posted_s = time.perf_counter() - started

                def covered() -> int:
                    return sum((m.body or "").count("#") for m in twilio.messages)

                with contextlib.suppress(TimeoutError):  # the figures below show what is missing
                    await eventually(lambda: covered() >= total, within=90)
                done_s = time.perf_counter() - started
                await asyncio.sleep(3)  # past a lease period: late duplicates would show here
        finally:
            for proc in [web, *workers]:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            codes = [await proc.wait() for proc in [web, *workers]]
        if embedded is not None:
            await embedded.stop()

    seen: dict[str, list[str]] = defaultdict(list)
    for sent in twilio.messages:
        seen[sent.to] += (sent.body or "").removeprefix("echo:").split("\n")
    duplicates = losses = disorder = 0
    for n in range(conversations):
        got = seen[f"whatsapp:+1555{n:07d}"]
        want = [f"{n}#{m}" for m in range(messages)]
        duplicates += len(got) - len(set(got))
        losses += len(set(want) - set(got))
        first_seen = list(dict.fromkeys(g for g in got if g in want))  # a duplicate is not
        disorder += int(first_seen != sorted(first_seen, key=want.index))  # disorder
    print(f"scale-out: 1 web + 3 workers, {conversations} conversations x {messages} messages")
    print(f"  webhooks acked 200      {len(acks)} of {total} (HTTP statuses: {dict(statuses)})")
    print(
        f"  ack latency ms          p50 {percentile(acks, 50):.1f}  p99 {percentile(acks, 99):.1f}"
    )
    print(f"  worker 1 SIGKILLed at   {killed_at:.2f} s (exit codes {codes})")
    print(f"  all posted after        {posted_s:.2f} s; all answered after {done_s:.2f} s")
    print(f"  replies sent            {len(twilio.messages)} (bursts merge messages into one turn)")
    print(f"  model calls             {len(model.requests_to('/responses'))}")
    print(f"  duplicates {duplicates}   losses {losses}   conversations out of order {disorder}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--messages", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="switchboard-bench-") as workdir:
        asyncio.run(run(args.conversations, args.messages, Path(workdir)))


if __name__ == "__main__":
    main()
