"""The intake spool: messages Redis could not confirm, kept in an fsync'd local file meanwhile.

Each process appends to its own file under `<BOT_DATA_DIR>/spool/` (mode 0600, flock'd while
the process lives); a drainer moves the lines into Redis through the normal intake, in arrival
order, and empties a file only after Redis confirmed every line of it. Files left by dead
processes are adopted under the same lock, so two live processes never drain one file.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import time
import uuid
from pathlib import Path
from typing import Protocol

from bot.errors import StoreUnavailable
from bot.logs import Logger
from bot.messages import InboundMessage

SUFFIX = ".jsonl"
READ_CHUNK = 1 << 20
INTAKE_DEADLINE = 5.0  # Twilio gives a webhook 15 s; Telegram's is similar


class Intake(Protocol):
    """Where spooled messages go once Redis answers (RedisIntake)."""

    async def accept(self, message: InboundMessage) -> bool: ...


class SpoolFile:
    """One spool file, held open under an exclusive flock; `drained` bytes are in Redis."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.drained = 0

    def read(self, start: int, end: int) -> bytes:
        chunks: list[bytes] = []
        while start < end:
            chunk = os.pread(self.fd, end - start, start)
            if not chunk:
                break
            chunks.append(chunk)
            start += len(chunk)
        return b"".join(chunks)

    def close(self, *, remove: bool) -> None:
        """Release the lock; `remove` deletes the file first (while still holding it)."""
        if remove:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """This process's spool file and the files it adopted from dead processes."""

    def __init__(self, folder: Path | str, *, log: Logger, read_chunk: int = READ_CHUNK) -> None:
        self.folder = Path(folder)
        self.log = log
        self.read_chunk = read_chunk
        self.own: SpoolFile | None = None
        self.own_bytes = 0  # complete lines written to the own file since it was last emptied
        self.adopted: list[SpoolFile] = []
        self.lock = asyncio.Lock()  # appends and the drainer's read/empty steps, in order
        # Lines waiting for the lock: the next writer writes them all with one fsync.
        self.waiting: list[tuple[bytes, asyncio.Future[None]]] = []

    @property
    def pending(self) -> bool:
        """Messages wait here for Redis: a new message must queue behind them."""
        return self.own_bytes > 0 or bool(self.adopted) or bool(self.waiting)

    async def append(self, message: InboundMessage) -> None:
        """Write `message` as one line and fsync it; StoreUnavailable if the disk refused.

        Group commit: lines that arrive while a write is running wait for the lock, and the
        first of them to get it writes them all, in arrival order, with one fsync; so a burst
        costs one fsync per batch, not one per message.
        """
        line = json.dumps(message.to_dict(), ensure_ascii=False).encode() + b"\n"
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append((line, written))
        async with self.lock:
            if not written.done():
                await self._write_waiting()
        try:
            written.result()
        except OSError as exc:
            self.log.error(
                "spool_failed",
                channel=message.channel,
                conversation=message.conversation,
                msg_id=message.platform_id,
                error=f"{type(exc).__name__}: {exc}",
            )
            raise StoreUnavailable(
                "neither Redis nor the local spool could keep the message; retry later"
            ) from exc

    async def _write_waiting(self) -> None:
        """Write every waiting line in one go (the lock held); settle each one's future."""
        batch, self.waiting = self.waiting, []
        outcome: BaseException | None = OSError("the spool write was interrupted")
        try:
            await asyncio.to_thread(self._append, b"".join(line for line, _ in batch))
            outcome = None
        except OSError as exc:
            outcome = exc
        finally:
            for _, future in batch:
                if outcome is None:
                    future.set_result(None)
                else:
                    future.set_exception(outcome)

    def _append(self, line: bytes) -> None:
        if self.own is None:
            self.own = self._create()
        own, start = self.own, self.own_bytes
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(own.fd, view) :]
            os.fsync(own.fd)
        except OSError:
            try:  # a torn line would swallow the next one: cut it off
                os.ftruncate(own.fd, start)
            except OSError:  # cannot repair: keep the file for the drainer, start a new one
                self.adopted.append(own)
                self.own, self.own_bytes = None, 0
            raise
        self.own_bytes += len(line)

    def _create(self) -> SpoolFile:
        """A new file, locked before it gets the name the adopters look for."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        fresh = self.folder / f"{name}.new"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        fd = os.open(fresh, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path = self.folder / f"{name}{SUFFIX}"
            fresh.rename(path)
            _fsync_dir(self.folder)
        except OSError:
            os.close(fd)
            fresh.unlink(missing_ok=True)
            raise
        return SpoolFile(path, fd)

    def adopt(self) -> int:
        """Take over the files of processes that are gone (their lock is free); how many."""
        if not self.folder.is_dir():
            return 0
        held = {f.path for f in self.adopted} | ({self.own.path} if self.own else set())
        found: list[tuple[float, Path]] = []
        for path in self.folder.glob(f"*{SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                if path not in held:
                    found.append((path.stat().st_mtime, path))
        taken = 0
        for _, path in sorted(found):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:  # drained and removed by another process meanwhile
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except (BlockingIOError, FileNotFoundError):  # alive, or removed since we opened it
                same = False
            if not same:
                os.close(fd)
                continue
            self.adopted.append(SpoolFile(path, fd))
            taken += 1
            if size := os.fstat(fd).st_size:  # an empty one is just removed
                self.log.warning("spool_adopted", file=path.name, bytes=size)
        return taken

    async def drain(self, intake: Intake) -> int:
        """Move every spooled message into `intake` in order; the count moved.

        Raises StoreUnavailable when Redis stops confirming: what was confirmed stays
        confirmed, the rest is tried again next time.
        """
        started, moved = time.monotonic(), 0
        while self.adopted:
            spooled = self.adopted[0]
            end = os.fstat(spooled.fd).st_size
            moved += await self._drain_file(spooled, end, intake, final=True)
            self.adopted.pop(0)
            spooled.close(remove=True)
        while (own := self.own) is not None:
            async with self.lock:
                end = self.own_bytes
                if own.drained >= end:
                    if end:  # all confirmed: empty it, with no append in between
                        os.ftruncate(own.fd, 0)
                        own.drained = self.own_bytes = 0
                    break
            # Lines below `end` are complete and fsync'd; appends go after them meanwhile.
            moved += await self._drain_file(own, end, intake, final=False)
        if moved:
            ms = round((time.monotonic() - started) * 1000)
            self.log.info("spool_drained", count=moved, ms=ms)
        return moved

    async def _drain_file(
        self, spooled: SpoolFile, end: int, intake: Intake, *, final: bool
    ) -> int:
        """Move the lines of `spooled` up to byte `end`, a chunk at a time (a long outage
        can leave a big file); `final`: no one writes this file any more."""
        moved, chunk = 0, self.read_chunk
        while spooled.drained < end:
            start, stop = spooled.drained, min(end, spooled.drained + chunk)
            data = await asyncio.to_thread(spooled.read, start, stop)
            moved += await self._move(spooled, data, intake, final=final and stop == end)
            if spooled.drained == start:  # no newline in the chunk: a longer line
                if stop == end:
                    break
                chunk *= 2
        return moved

    async def _move(self, spooled: SpoolFile, data: bytes, intake: Intake, *, final: bool) -> int:
        """Accept each complete line of `data`; skip (with a warning) what cannot be read.

        `final`: `data` runs to the end of a file no one writes any more, so a last line
        without its newline was cut off mid-write (a crash or power cut) and is skipped.
        """
        moved = 0
        lines = data.split(b"\n")
        tail = lines.pop()  # after the last newline: empty, or a torn line
        for line in lines:
            message = self._parse(spooled, line)
            if message is not None:
                await intake.accept(message)
                moved += 1
            spooled.drained += len(line) + 1
        if tail and final:
            self.log.warning("spool_line_skipped", file=spooled.path.name, reason="torn last line")
            spooled.drained += len(tail)
        return moved

    def _parse(self, spooled: SpoolFile, line: bytes) -> InboundMessage | None:
        try:
            return InboundMessage.from_dict(json.loads(line))
        except (ValueError, KeyError, TypeError) as exc:
            reason = f"unreadable line: {type(exc).__name__}"
            self.log.warning("spool_line_skipped", file=spooled.path.name, reason=reason)
            return None

    def close(self) -> None:
        """Release every file; an empty own file is removed, the rest wait for adoption."""
        if self.own is not None:
            self.own.close(remove=self.own_bytes == 0)
            self.own, self.own_bytes = None, 0
        for spooled in self.adopted:
            spooled.close(remove=False)
        self.adopted.clear()


class SpooledIntake:
    """Intake that keeps a message in the local spool when Redis cannot confirm it, and
    queues every message behind the spooled ones until they reached Redis (order holds)."""

    def __init__(
        self, intake: Intake, spool: Spool, *, log: Logger, deadline: float = INTAKE_DEADLINE
    ) -> None:
        self.intake = intake
        self.spool = spool
        self.log = log
        self.deadline = deadline

    async def accept(self, message: InboundMessage) -> bool:
        """Store `message` in Redis, else in the spool; StoreUnavailable if neither took it.

        Redis gets `deadline` seconds: a hung server (the client's own timeouts and retries
        add up to far more) must not hold the webhook past the platform's timeout. A write
        that landed after all is deduplicated when the spool is drained.
        """
        if not self.spool.pending:
            try:
                async with asyncio.timeout(self.deadline):
                    return await self.intake.accept(message)
            except StoreUnavailable:
                pass
            except TimeoutError:
                self.log.error(
                    "intake_failed",
                    channel=message.channel,
                    conversation=message.conversation,
                    msg_id=message.platform_id,
                    error=f"Redis did not confirm within {self.deadline:g} s",
                )
        return await SpillIntake(self.spool, log=self.log).accept(message)


class SpillIntake:
    """Intake straight into the spool, Redis untried: where a web process past its in-flight
    limit puts a WhatsApp webhook, since a 503 would lose it (bot.web)."""

    def __init__(self, spool: Spool, *, log: Logger, reason: str | None = None) -> None:
        self.spool = spool
        self.log = log
        self.reason = reason

    async def accept(self, message: InboundMessage) -> bool:
        """Append `message` to the spool (fsync'd); StoreUnavailable if the disk refused."""
        await self.spool.append(message)
        extra = {"reason": self.reason} if self.reason else {}
        self.log.warning(
            "message_spooled",
            channel=message.channel,
            conversation=message.conversation,
            msg_id=message.platform_id,
            **extra,
        )
        return True


class SpoolDrainer:
    """A background task: adopt dead processes' files, drain the spool whenever Redis answers."""

    def __init__(
        self,
        *,
        spool: Spool,
        intake: Intake,
        log: Logger,
        every: float = 0.5,
        max_wait: float = 2.0,
    ) -> None:
        self.spool = spool
        self.intake = intake
        self.log = log
        self.every = every
        self.max_wait = max_wait

    async def run(self, stop: asyncio.Event) -> None:
        """Drain until `stop` is set, backing off while Redis is down; one last try at stop."""
        wait = self.every
        while not stop.is_set():
            wait = self.every if await self.drain_once() else min(wait * 2, self.max_wait)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await stop.wait()
        await self.drain_once()

    async def drain_once(self) -> bool:
        """Adopt and drain now; False if something is left for later."""
        try:
            self.spool.adopt()
            if self.spool.pending:
                await self.spool.drain(self.intake)
        except StoreUnavailable:  # Redis still down: RedisIntake logged intake_failed
            return False
        except OSError as exc:
            self.log.error("spool_failed", error=f"{type(exc).__name__}: {exc}")
            return False
        return True
