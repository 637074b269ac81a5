"""The Redis work of one plain WhatsApp turn, by step, in CPU instructions: a figure that does
not move with the machine's load or hour, so two versions compare in one run each.

bench.redisload reads Redis's CPU time a turn, which on a shared VM moves by 30 % from one hour
to the next. Here a redis-server runs under valgrind's callgrind, which counts the instructions
it executes (its own, its Lua's, its libc's and allocator's; not the kernel's: the system calls
that read and write sockets and files are left out). `--aof` turns the append-only file on, as
the embedded Redis has it: its formatting of every write is counted. One client does `--turns`
turns the way bench.redisload's clients do, with the gateway's own scripts, keys and
arguments, step by step: every turn's intake, then every turn's claim, and so on, each step's
calls pipelined 50 at a time (so a round trip's cost is spread thin: this is the commands' and
scripts' work, not the network's). The counters are zeroed before a step and read after it
(callgrind_control), so each step's instructions are its own; per turn = the step's
instructions / turns.

`--returning`: the same senders' second turns (their memory and usage keys exist), measured
after an unmeasured first round. `--together K`: the usage step goes through the gateway's group
commit (bot.roundtrips), K turns to a flush, so the model's day they all add to is written once
for the K (bench.turncost at 300/s sees about 7 turns a flush; 1, the default, is a lone turn's).

    .venv/bin/python -m bench.rediswork [--turns 300] [--returning] [--aof] [--together K]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

import bench
from bench.redisload import LOG_EVERY, Client, event_lines
from bot.intake import ACCEPT, DEDUPE_SECONDS, READY_MAXLEN, READY_STREAM, inbox_key, seen_key
from bot.logs import EVENT_STREAM
from bot.messages import InboundMessage
from bot.redisdb import connect
from bot.roundtrips import coalescer_for
from bot.scripts import load_scripts
from bot.wakeups import GROUP, ensure_group, queue_acks
from bot.worker import COMMIT, FINISH, TAKE

PER_PIPELINE = 50
READ_EVERY = 8  # wake-ups a worker read returns (bench.redisload's --batch)
DUMP_WAIT = 30.0  # seconds a callgrind dump may take to appear


class Callgrind:
    """A redis-server under callgrind: its instruction count between zero() and read()."""

    def __init__(self, workdir: Path, *, aof: bool) -> None:
        for tool, package in [("valgrind", "valgrind"), ("redis-server", "redis-server")]:
            if shutil.which(tool) is None:
                raise SystemExit(f"bench.rediswork needs {tool} (Debian: apt install {package})")
        self.dir = workdir
        self.socket = workdir / "redis.sock"
        self.proc = subprocess.Popen(
            [
                "valgrind", "--tool=callgrind", f"--callgrind-out-file={workdir}/cg.%p",
                "redis-server", "--port", "0", "--unixsocket", str(self.socket),
                "--save", "", "--appendonly", "yes" if aof else "no", "--dir", str(workdir),
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def _control(self, flag: str) -> None:
        subprocess.run(
            ["callgrind_control", flag, str(self.proc.pid)], capture_output=True, check=True
        )

    def zero(self) -> None:
        self._control("-z")

    def read(self) -> int:
        """Instructions since the last zero(): a dump, read once it is written."""
        before = set(self.dir.glob("cg.*"))
        self._control("-d")
        deadline = time.monotonic() + DUMP_WAIT
        while time.monotonic() < deadline:
            for dump in set(self.dir.glob("cg.*")) - before:
                for line in dump.read_text().splitlines():
                    if line.startswith("summary:"):
                        return int(line.split()[1])
            time.sleep(0.05)
        raise SystemExit("callgrind wrote no dump")

    def stop(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)
        if self.proc.poll() is None:
            self.proc.kill()


@contextlib.contextmanager
def server(workdir: Path, *, aof: bool) -> Iterator[Callgrind]:
    cg = Callgrind(workdir, aof=aof)
    try:
        yield cg
    finally:
        cg.stop()


Step = Callable[[Pipeline, int], Any]


class Round:
    """One round of turns, one conversation each: every step's commands for turn n, queued on
    a pipeline as the gateway queues them (bench.redisload's Client supplies the parts)."""

    def __init__(
        self, client: Client, senders: list[InboundMessage], tag: str, *, fresh: bool = True
    ) -> None:
        self.client = client
        self.fresh = fresh  # the turns found no memory: COMMIT and the usage are told so
        self.worker = worker = client.worker
        self.messages = [
            dataclasses.replace(m, platform_id=f"{m.platform_id}-{tag}") for m in senders
        ]
        self.tokens = [worker._token() for _ in senders]
        self.takes = [worker._take_args(t, "") for t in self.tokens]
        self.commits = [
            client.commit_call(m.conversation, t, str(a[1]), m.platform_id, fresh=fresh)
            for m, t, a in zip(self.messages, self.tokens, self.takes, strict=True)
        ]
        self.events = "\n".join(event_lines())
        self.woken: list[str] = []  # the wake-ups' stream entry ids, as intake added them

    def lease(self, n: int) -> str:
        return self.worker._take_keys(self.messages[n].conversation)[0]

    def accept(self, pipe: Pipeline, n: int) -> None:
        """RedisIntake.accept on one server: ACCEPT, then the wake-up."""
        message = self.messages[n]
        body = json.dumps(message.to_dict(), ensure_ascii=False)
        keys = [seen_key(message), inbox_key(message.conversation)]
        ACCEPT.queue(pipe, keys, [DEDUPE_SECONDS, body], by_source=True)
        wake: Any = {"conversation": message.conversation, "channel": "whatsapp"}
        wake["sender"] = message.sender
        pipe.xadd(READY_STREAM, wake, maxlen=READY_MAXLEN, approximate=True)

    def read(self, pipe: Pipeline, n: int) -> None:
        """Every READ_EVERY turns a worker's read, the last read's entries acked with it, and
        the reads a busy process makes once a period (everyone's default model, the breaker,
        LM Studio's state; bot.llm's READ_EVERY): here once a read, an upper bound."""
        if n % READ_EVERY == 0:
            queue_acks(pipe, self.worker.name, self.woken[max(0, n - READ_EVERY) : n])
            pipe.xreadgroup(GROUP, self.worker.name, {READY_STREAM: ">"}, count=READ_EVERY)
            self.client.queue_shared(pipe)

    def take(self, pipe: Pipeline, n: int) -> None:
        TAKE.queue(pipe, self.worker._take_keys(self.messages[n].conversation), self.takes[n])

    def rate(self, pipe: Pipeline, n: int) -> None:
        conversation, access = self.messages[n].conversation, self.client.access
        lease, token = self.lease(n), self.tokens[n]
        access.read_sender("whatsapp", conversation, lease=lease, token=token).queue(pipe)

    def state(self, pipe: Pipeline, n: int) -> None:
        """The turn's state with its conversation's model choice riding in it (Agent)."""
        self.client.state(self.messages[n].conversation).queue(pipe)

    def commit(self, pipe: Pipeline, n: int) -> None:
        keys, args, _ = self.commits[n]
        COMMIT.queue(pipe, keys, args)

    def usage(self, pipe: Pipeline, n: int) -> None:
        """A turn's usage: on a plain pipeline a lone turn's (its model's day written by its own
        call); on a group commit's, the model's day summed over the flush's turns."""
        conversation, client = self.messages[n].conversation, self.client
        calls = [client.call]
        client.usage.queue_record(
            pipe, sender=conversation, conversation=conversation, calls=calls, fresh=self.fresh
        )

    def finish(self, pipe: Pipeline, n: int) -> None:
        conversation, token, batch_id = (
            self.messages[n].conversation,
            self.tokens[n],
            self.takes[n][1],
        )
        FINISH.queue(
            pipe, *self.client.finish_call(conversation, token, str(batch_id), self.commits[n][2])
        )

    def log(self, pipe: Pipeline, n: int) -> None:
        if n % LOG_EVERY == 0:  # a full entry every LOG_EVERY turns
            cap = self.client.log_cap
            pipe.xadd(EVENT_STREAM, {"e": self.events}, maxlen=cap, approximate=True)

    def steps(self) -> list[tuple[str, Step]]:
        return [
            ("worker: XREADGROUP, acks, period reads (8)", self.read),
            ("claim: TAKE", self.take),
            ("claim: RATE (the access check)", self.rate),
            ("claim: STATE with the conversation's choice", self.state),
            ("commit: COMMIT", self.commit),
            ("commit: usage (queue_record)", self.usage),
            ("FINISH (last ADVANCE + TAKE)", self.finish),
            (f"log events (an XADD every {LOG_EVERY}th turn)", self.log),
        ]


async def measure(turns: int, returning: bool, cg: Callgrind, together: int) -> dict[str, float]:
    redis = connect(cg.url, socket_timeout=120)
    deadline = time.monotonic() + 120
    while True:  # valgrind starts redis-server slowly
        try:
            await redis.ping()
            break
        except (RedisError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    await ensure_group(redis)
    await load_scripts(redis)
    client = Client(redis, 1, PER_PIPELINE)
    found: dict[str, float] = {}

    async def step(name: str, queue: Step, measured: bool, *, grouped: bool = False) -> list[Any]:
        if measured:
            cg.zero()
        replies: list[Any] = []
        for start in range(0, turns, together if grouped else PER_PIPELINE):
            if grouped:  # K callers of one loop iteration: one flush (bot.roundtrips)
                flush = coalescer_for(redis)
                group = range(start, min(turns, start + together))
                for mine in await asyncio.gather(
                    *(flush.run(functools.partial(queue, n=n)) for n in group)
                ):
                    replies += mine
                continue
            async with redis.pipeline(transaction=False) as pipe:
                for n in range(start, min(turns, start + PER_PIPELINE)):
                    queue(pipe, n)
                replies += await pipe.execute()
        if measured:
            found[name] = cg.read() / turns
        return replies

    senders = [client.message(n) for n in range(turns)]
    for measured in [False, True] if returning else [True]:
        # A sender's first turn finds no memory: every round but a --returning measured one.
        turn = Round(client, senders, str(measured), fresh=not (returning and measured))
        woken = await step("intake: ACCEPT + XADD of the wake-up", turn.accept, measured)
        turn.woken = [str(entry) for entry in woken[1::2]]
        for name, queue in turn.steps():
            await step(name, queue, measured, grouped=together > 1 and queue == turn.usage)
    await redis.aclose()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--returning", action="store_true", help="the senders' second turns")
    parser.add_argument(
        "--aof", action="store_true", help="append-only file on, as the embedded Redis has it"
    )
    parser.add_argument(
        "--together", type=int, default=1, help="turns a group commit flushes together (usage)"
    )
    args = parser.parse_args()
    with (
        bench.workdir("switchboard-rediswork-", keep=False) as workdir,
        server(workdir, aof=args.aof) as cg,
    ):
        found = bench.run(measure(args.turns, args.returning, cg, args.together))
    total = sum(found.values())
    kind = "returning conversations' turns" if args.returning else "new conversations' turns"
    disk = "append-only file on" if args.aof else "nothing kept on disk"
    grouped = f"; usage {args.together} turns a flush" if args.together > 1 else ""
    print(
        f"Redis instructions per turn (callgrind; {args.turns} {kind}; {disk}{grouped}; "
        "kernel not counted)"
    )
    for name, count in found.items():
        print(f"  {name:44s} {count:9,.0f}  {count / total * 100:5.1f} %")
    print(f"  {'all':44s} {total:9,.0f}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
