"""Open-loop WhatsApp webhook load for `bench.pipeline`: fixed send times, whatever the replies.

Every request is one new conversation (a distinct From number, a unique MessageSid), built and
Twilio-signed before the clock starts. Sends are scheduled every 1/rate seconds as independent
tasks; each records wall-clock (time.time()) send and ack times and the HTTP status. A few
warm-up messages (From numbers with another prefix) go first, sequentially, and are not
recorded. Results go to a JSON file: {"rate", "seconds", "late", "results": [{from, sent_at,
acked_at, status}]}.

Several processes can share one load (`bench.pipeline --loadgen-procs K`): each gets rate/K,
its own From numbers (`--first`), the same wall-clock start (`--start-at`, time.time()) and its
own phase (`--phase`, seconds), so together they send at the full rate, evenly interleaved;
`late` is how many seconds after `--start-at` this one could start (0 when on time).

Run: `python -m bench.loadgen --url URL --rate 300 --seconds 6 --token T --out results.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

import bench
from tests.fakes.twilio_server import signed_form, whatsapp_inbound

SENDER = "whatsapp:+14155238886"
MEASURED_PREFIX = "whatsapp:+1555"
WARMUP_PREFIX = "whatsapp:+1666"


@dataclass(slots=True)
class Result:
    """One webhook: who sent it, when it left, when (and how) it was answered."""

    from_: str
    sent_at: float
    acked_at: float | None = None
    status: int | None = None  # None: no HTTP answer (connection error or timeout)


def build(
    url: str, token: str, prefix: str, count: int, first: int = 0
) -> list[tuple[str, bytes, dict]]:
    """`count` signed webhook requests, one per conversation (From numbers from `first` on):
    (From, body, headers)."""
    requests = []
    for n in range(first, first + count):
        phone = f"{prefix}{n:07d}"
        fields = whatsapp_inbound(from_=phone, to=SENDER, body=f"hello {n}")
        body, headers = signed_form(token, url, fields)
        requests.append((phone, body, headers))
    return requests


async def post(
    http: aiohttp.ClientSession, url: str, request: tuple[str, bytes, dict], result: Result
) -> None:
    """Send one webhook and record the answer (or its absence)."""
    _, body, headers = request
    result.sent_at = time.time()
    try:
        async with http.post(url, data=body, headers=headers) as response:
            await response.read()
            result.status = response.status
            result.acked_at = time.time()
    except (aiohttp.ClientError, TimeoutError):
        result.acked_at = None


async def warm_up(
    http: aiohttp.ClientSession, url: str, token: str, count: int, first: int = 0
) -> None:
    """A few sequential webhooks so first-request costs are not measured."""
    for request in build(url, token, WARMUP_PREFIX, count, first):
        await post(http, url, request, Result(from_=request[0], sent_at=0.0))
    await asyncio.sleep(0.5)  # let their replies go out before the clock starts


async def run(args: argparse.Namespace) -> tuple[list[Result], float]:
    """Warm up, then send rate x seconds webhooks open-loop and wait for every answer; the
    results and how late the start was (seconds)."""
    total = round(args.rate * args.seconds)
    requests = build(args.url, args.token, MEASURED_PREFIX, total, args.first)
    results = [Result(from_=phone, sent_at=0.0) for phone, _, _ in requests]
    connector = aiohttp.TCPConnector(limit=1000)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    late = 0.0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        await warm_up(http, args.url, args.token, args.warmup, args.first)
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05
        if args.start_at is not None:  # the same wall-clock start as the other load processes
            late = max(0.0, time.time() - args.start_at)
            start = loop.time() + (args.start_at - time.time())
        start += args.phase
        tasks = []
        for n, request in enumerate(requests):
            delay = start + n / args.rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(post(http, args.url, request, results[n])))
        await asyncio.wait(tasks, timeout=args.timeout + 5)
        for task in tasks:
            task.cancel()
    return results, late


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the webhook URL (also signed)")
    parser.add_argument("--rate", type=float, required=True, help="webhooks per second")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--token", required=True, help="the Twilio auth token to sign with")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=30, help="per-request limit, seconds")
    parser.add_argument("--first", type=int, default=0, help="number of the first From")
    parser.add_argument("--start-at", type=float, help="wall-clock start (time.time())")
    parser.add_argument("--phase", type=float, default=0, help="seconds after the start")
    args = parser.parse_args()
    results, late = bench.run(run(args))
    rows = [{**asdict(r), "from": r.from_} for r in results]
    for row in rows:
        del row["from_"]
    payload = {"rate": args.rate, "seconds": args.seconds, "late": late, "results": rows}
    args.out.write_text(json.dumps(payload))


if __name__ == "__main__":
    main()
