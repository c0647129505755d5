"""Chaos soak: publish N messages with unique ids straight to the broker, run
`rabbitworker run --processes 2` through a cuttable proxy, SIGKILL worker processes
and cut their connections at random while they work, then compare the ids handled
(recorded by benchmarks/soak_app.py) with the ids published.

    python benchmarks/soak.py --messages 100000 --kills 10 --cuts 10

Prints lost, duplicated and total handlings, time, kills and cuts; exits 1 if any
message was lost, 3 if the run gave up before every message was handled.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import aio_pika  # noqa: E402
from support.proxy import Proxy  # noqa: E402

__all__ = ["main"]


@dataclass
class Record:
    """The handlers' record file, read incrementally: handlings per id, and pids."""

    path: Path
    counts: Counter[str] = field(default_factory=Counter)
    pids: set[str] = field(default_factory=set)
    _offset: int = 0
    _partial: bytes = b""

    def refresh(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            message_id, _, pid = line.decode().partition(" ")
            self.counts[message_id] += 1
            self.pids.add(pid)


@dataclass
class Chaos:
    """What was done to the workers, for the report."""

    kills: int = 0
    cuts: int = 0
    outages: int = 0  # cuts that also kept the broker unreachable for a while
    down_seconds: float = 0.0
    log: list[str] = field(default_factory=list)


def children_of(pid: int) -> list[int]:
    """Live child processes of `pid`, from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces.
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


async def stop_supervisor(supervisor: subprocess.Popen[bytes]) -> None:
    """SIGTERM a `rabbitworker run` supervisor and wait for its drain; after 60 s,
    SIGKILL it and its workers."""
    if supervisor.poll() is not None:
        return
    supervisor.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(supervisor.wait, 60)
    except subprocess.TimeoutExpired:
        for child in children_of(supervisor.pid):
            os.kill(child, signal.SIGKILL)
        supervisor.kill()
        supervisor.wait()


async def publish_all(app: Any, job: Any, n: int, window: int) -> set[str]:
    """Publish n jobs with ids "0".."n-1", `window` confirms in flight at once."""
    ids = [str(i) for i in range(n)]
    for start in range(0, n, window):
        batch = range(start, min(n, start + window))
        await asyncio.gather(*(app.publish(job(n=i), message_id=ids[i]) for i in batch))
    return set(ids)


async def delete_topology(url: str, topology: Any) -> None:
    connection = await aio_pika.connect(url)
    try:
        for name in [q.name for q in topology.queues] + [e.name for e in topology.exchanges]:
            channel = await connection.channel()
            try:
                if name in {q.name for q in topology.queues}:
                    await channel.queue_delete(name)
                else:
                    await channel.exchange_delete(name)
            except aio_pika.exceptions.AMQPError:
                pass  # already gone
            finally:
                if not channel.is_closed:
                    await channel.close()
    finally:
        await connection.close()


async def queue_counts(url: str, names: list[str]) -> dict[str, int]:
    out = {}
    connection = await aio_pika.connect(url)
    try:
        for name in names:
            channel = await connection.channel()
            try:
                declared = await channel.declare_queue(name, passive=True)
                out[name] = int(declared.declaration_result.message_count or 0)
            except aio_pika.exceptions.AMQPError:
                out[name] = -1
            finally:
                if not channel.is_closed:
                    await channel.close()
    finally:
        await connection.close()
    return out


async def cut(proxy: Proxy, chaos: Chaos, rng: random.Random, max_down: float) -> None:
    """Drop every worker connection; sometimes keep the broker unreachable a while."""
    if max_down > 0 and rng.random() < 0.4:
        down = rng.uniform(0.2, max_down)
        dropped = proxy.cut(down="refuse")
        chaos.outages += 1
        chaos.down_seconds += down
        chaos.log.append(f"cut {dropped} connections, broker unreachable for {down:.1f} s")
        await asyncio.sleep(down)
        await proxy.restore()
    else:
        dropped = proxy.cut()
        chaos.log.append(f"cut {dropped} connections")


async def soak(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    prefix = f"soak-{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    record = Record(workdir / "handled.txt")
    os.environ["SOAK_PREFIX"] = prefix
    os.environ["SOAK_RECORD"] = str(record.path)
    sys.path.insert(0, str(HERE))
    import soak_app

    app = soak_app.app
    app.configure(url=args.url)
    topology = app.topology()
    chaos = Chaos()
    started = time.monotonic()
    print(
        f"soak: N={args.messages} processes={args.processes} kills={args.kills} "
        f"cuts={args.cuts} seed={args.seed} prefix={prefix}",
        flush=True,
    )
    try:
        async with app:
            published = await publish_all(app, soak_app.Job, args.messages, args.window)
        publish_time = time.monotonic() - started
        print(f"published {len(published)} in {publish_time:.1f} s", flush=True)

        async with Proxy.to(args.url) as proxy:
            status, consume_time, restarts = await run_workers(
                args, proxy, record, published, chaos, rng, workdir
            )
        total_time = time.monotonic() - started
        record.refresh()
        left = await queue_counts(args.url, [soak_app.QUEUE, f"{soak_app.QUEUE}.dlq"])
    finally:
        await delete_topology(args.url, topology)

    handled = set(record.counts)
    lost = published - handled
    duplicated = sum(1 for c in record.counts.values() if c > 1)
    handlings = sum(record.counts.values())
    for line in chaos.log:
        print(f"  {line}")
    print(f"lost: {len(lost)}")
    print(f"duplicated: {duplicated} ids handled more than once ({handlings - len(handled)} extra)")
    print(f"total: {handlings} handlings of {len(handled)} ids (published {len(published)})")
    print(f"unknown ids: {len(handled - published)}")
    print(f"time: {total_time:.1f} s (publish {publish_time:.1f} s, consume {consume_time:.1f} s)")
    print(
        f"kills: {chaos.kills}  cuts: {chaos.cuts} ({chaos.outages} with the broker "
        f"unreachable, {chaos.down_seconds:.1f} s in all)  worker restarts: {restarts}  "
        f"worker pids seen: {len(record.pids)}"
    )
    print(f"left in queue: {left[soak_app.QUEUE]}  dead-lettered: {left[f'{soak_app.QUEUE}.dlq']}")
    if lost:
        print(f"LOST ids (first 20): {sorted(lost, key=int)[:20]}; logs in {workdir}")
        return 1
    if status != 0:
        print(f"the run did not finish; logs in {workdir}")
        return status
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


async def run_workers(
    args: argparse.Namespace,
    proxy: Proxy,
    record: Record,
    published: set[str],
    chaos: Chaos,
    rng: random.Random,
    workdir: Path,
) -> tuple[int, float, int]:
    """Run the supervisor until every id was handled; returns (code, seconds, restarts)."""
    env = {
        **os.environ,
        "RABBITWORKER_URL": proxy.url(args.url),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]),
    }
    log_path = workdir / "workers.log"
    log = log_path.open("wb")
    cmd = [sys.executable, "-m", "rabbitworker", "run", "--app", "soak_app:app"]
    cmd += ["--processes", str(args.processes), "--log-level", "WARNING"]
    supervisor = subprocess.Popen(cmd, env=env, cwd=str(HERE), stdout=log, stderr=subprocess.STDOUT)
    events = ["kill"] * args.kills + ["cut"] * args.cuts
    rng.shuffle(events)
    # Spread the events over the run by progress, not time: the run's length is unknown.
    steps = len(events) + 2  # the last event comes well before the end
    thresholds = [args.messages * (i + 1) / steps for i in range(len(events))]
    started = time.monotonic()
    last_event = 0.0
    last_progress, progress_at = 0, started
    background: set[asyncio.Task[None]] = set()
    code = 0
    consume_time = 0.0
    try:
        while True:
            await asyncio.sleep(0.05)
            record.refresh()
            done = len(published.intersection(record.counts))
            now = time.monotonic()
            if done > last_progress:
                last_progress, progress_at = done, now
            if done >= len(published) and not events:
                break
            if supervisor.poll() is not None:
                print(f"the supervisor exited with {supervisor.returncode}", flush=True)
                code = 3
                break
            if now - progress_at > args.stall or now - started > args.timeout:
                print(f"no progress for {now - progress_at:.0f} s: giving up", flush=True)
                code = 3
                break
            if not events or done < thresholds[0] or now - last_event < args.gap:
                continue
            if events[0] == "kill":
                live = children_of(supervisor.pid)
                if not live:
                    continue  # every worker is between a death and its restart
                victim = rng.choice(live)
                os.kill(victim, signal.SIGKILL)
                chaos.kills += 1
                chaos.log.append(f"SIGKILL worker {victim} at {done} handled")
            else:
                if background or not proxy.connections:
                    continue  # an outage is still on, or no worker is connected yet
                chaos.cuts += 1
                task = asyncio.create_task(cut(proxy, chaos, rng, args.max_down))
                background.add(task)
                task.add_done_callback(background.discard)
            events.pop(0)
            thresholds.pop(0)
            last_event = now
        consume_time = time.monotonic() - started
        if background:
            await asyncio.wait(background)
    finally:
        await stop_supervisor(supervisor)
        log.close()
    restarts = log_path.read_text(errors="replace").count("restarting in")
    return code, consume_time, restarts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", "-n", type=int, default=100_000)
    parser.add_argument("--kills", type=int, default=10, help="worker processes to SIGKILL")
    parser.add_argument("--cuts", type=int, default=10, help="connection cuts at the proxy")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument(
        "--max-down", type=float, default=3.0, help="longest outage after a cut, seconds"
    )
    parser.add_argument("--gap", type=float, default=1.0, help="least seconds between events")
    parser.add_argument("--window", type=int, default=1000, help="publishes in flight")
    parser.add_argument("--stall", type=float, default=120.0, help="give up after no progress")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up after, seconds")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--url",
        default=os.environ.get("RABBITWORKER_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    )
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1_000_000)
    sys.exit(asyncio.run(soak(args)))


if __name__ == "__main__":
    main()
