"""Failover soak: a 3-node RabbitMQ cluster of our own (tests/support/nodes.py), publishers and
`rabbitworker run --processes 2` workers on the URL that names all three nodes, and the
node that leads the work queue killed with SIGKILL mid-run and started again later.
Compares the ids handled (recorded by benchmarks/soak_app.py) with those whose publish
returned.

    python benchmarks/failover_soak.py --messages 20000 --rate 300 --down 15

Prints lost, duplicated, failed publishes, the longest pause in handling, the log lines
about the outage, and worker restarts; exits 1 if a message whose publish returned was
never handled, 3 if the run gave up before every message was handled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(HERE)]

from soak import Record, stop_supervisor  # noqa: E402
from support.nodes import NodeError, RabbitCluster, RabbitNode  # noqa: E402

__all__ = ["main"]


@dataclass
class Run:
    """What happened, for the report."""

    published: set[str] = field(default_factory=set)
    failed: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    killed_at: float | None = None
    longest_pause: float = 0.0  # between two handlings, while messages were waiting
    resumed_after: float | None = None  # from the kill to the next handling


class CountLogs(logging.Handler):
    """Counts the publishers' log records at WARNING and above, by logger."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()
        self.samples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.name] += 1
        if len(self.samples) < 8:
            self.samples.append(f"{record.levelname} {record.name}: {record.getMessage()}")


async def publisher(app: Any, job: Any, ids: list[int], rate: float, run: Run) -> None:
    """Publish `ids` at `rate` a second, without waiting for one confirm to send the next."""

    async def one(n: int) -> None:
        try:
            await app.publish(job(n=n), message_id=str(n))
            run.published.add(str(n))
        except Exception as exc:
            run.failed.append(f"{n}: {exc}")

    pending: set[asyncio.Task[None]] = set()
    started = time.monotonic()
    for k, n in enumerate(ids):
        await asyncio.sleep(max(0.0, started + k / rate - time.monotonic()))
        task = asyncio.create_task(one(n))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending)


async def led(cluster: RabbitCluster, queue: str, *, timeout: float) -> None:
    """Wait until `queue` exists and has a leader."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await asyncio.to_thread(cluster.leader_of, queue)
            return
        except NodeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def connections_by_node(cluster: RabbitCluster) -> Counter[str]:
    """Client connections per node ("n1", "n2", "n3"), by the port they came in on."""
    names = {node.amqp_port: f"n{k}" for k, node in enumerate(cluster.nodes, 1)}
    rows = json.loads(cluster.ask("list_connections", "port", "--formatter=json"))
    return Counter(names.get(int(row["port"]), "?") for row in rows)


async def chaos(cluster: RabbitCluster, queue: str, args: argparse.Namespace, run: Run) -> None:
    """Kill the queue's leader once `args.kill_after` of the run has passed, start it
    again `args.down` seconds later."""
    await asyncio.sleep(args.messages / args.rate * args.kill_after)
    leader: RabbitNode = await asyncio.to_thread(cluster.leader_of, queue)
    spread = await asyncio.to_thread(connections_by_node, cluster)
    run.events.append(f"client connections by node before the kill: {dict(sorted(spread.items()))}")
    run.events.append(f"leader: {leader.name}")
    run.killed_at = time.monotonic()
    await asyncio.to_thread(leader.kill)
    run.events.append(f"SIGKILL {leader.name} (the leader of {queue})")
    await asyncio.sleep(args.down)
    started = time.monotonic()
    await asyncio.to_thread(leader.start)
    run.events.append(
        f"{leader.name} started again after {args.down:.0f} s down"
        f" (boot {time.monotonic() - started:.1f} s)"
    )
    run.events.append(f"leader now: {(await asyncio.to_thread(cluster.leader_of, queue)).name}")


def start_workers(url: str, args: argparse.Namespace, log_path: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RABBITWORKER_URL": url,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]),
    }
    cmd = [sys.executable, "-m", "rabbitworker", "run", "--app", "soak_app:app"]
    level = os.environ.get("SOAK_LOG_LEVEL", "INFO")
    cmd += ["--processes", str(args.processes), "--log-level", level]
    with log_path.open("wb") as log:
        return subprocess.Popen(cmd, env=env, cwd=str(HERE), stdout=log, stderr=subprocess.STDOUT)


async def watch(record: Record, run: Run, publishing: asyncio.Task[Any], stall: float) -> int:
    """Follow the record until every published id was handled; 3 on a stall."""
    last_count, last_at = 0, time.monotonic()
    while True:
        await asyncio.sleep(0.02)
        record.refresh()
        now = time.monotonic()
        count = sum(record.counts.values())
        if count > last_count:
            if run.killed_at is not None and run.resumed_after is None and now > run.killed_at:
                run.resumed_after = now - run.killed_at
            last_count, last_at = count, now
            continue
        waiting = len(run.published - record.counts.keys()) > 0
        if waiting:
            run.longest_pause = max(run.longest_pause, now - last_at)
        if publishing.done() and not waiting:
            return 0
        if now - last_at > stall:
            print(f"no handling for {stall:.0f} s: giving up", flush=True)
            return 3


def worker_lines(log_path: Path) -> tuple[list[str], int, int]:
    """The workers' outage lines, their WARNING/ERROR line count, and restarts."""
    lines = log_path.read_text(errors="replace").splitlines()
    outage = [line for line in lines if " lost (" in line or "reconnected to" in line]
    loud = [line for line in lines if " WARNING " in line or " ERROR " in line]
    return outage, len(loud), sum("restarting in" in line for line in lines)


async def soak(args: argparse.Namespace) -> int:
    prefix = f"failover-{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    record = Record(workdir / "handled.txt")
    os.environ["SOAK_PREFIX"], os.environ["SOAK_RECORD"] = prefix, str(record.path)
    import soak_app

    logs = CountLogs()
    logging.getLogger().addHandler(logs)
    run = Run()
    print(f"failover soak: N={args.messages} rate={args.rate}/s publishers={args.publishers} "
          f"processes={args.processes} down={args.down} s", flush=True)  # fmt: skip
    started = time.monotonic()
    with RabbitCluster(3) as cluster:
        print(f"cluster up in {time.monotonic() - started:.1f} s: {cluster.multi_host_url}")
        supervisor = start_workers(cluster.multi_host_url, args, workdir / "workers.log")
        try:
            # The first worker to declare the queue leads it from the node it is on:
            # killing the leader kills that worker's node too.
            await led(cluster, soak_app.QUEUE, timeout=60)
            code = await drive(cluster, soak_app, record, run, args)
        finally:
            await stop_supervisor(supervisor)
        record.refresh()
    return report(run, record, logs, workdir, code, time.monotonic() - started)


async def drive(
    cluster: RabbitCluster, soak_app: Any, record: Record, run: Run, args: argparse.Namespace
) -> int:
    from rabbitworker import App

    apps = [App(f"publisher-{k}", exchange=soak_app.app.exchange) for k in range(args.publishers)]
    ids = list(range(args.messages))
    for app in apps:
        app.configure(url=cluster.multi_host_url, publish_timeout=args.publish_timeout)
        app.register(soak_app.Job)
        await app.connect()
    try:
        share = [ids[k :: len(apps)] for k in range(len(apps))]
        rate = args.rate / len(apps)
        publishing = asyncio.gather(
            *(
                publisher(app, soak_app.Job, part, rate, run)
                for app, part in zip(apps, share, strict=True)
            ),
            chaos(cluster, soak_app.QUEUE, args, run),
        )
        done = asyncio.ensure_future(publishing)
        code = await watch(record, run, done, args.stall)
        if done.done():
            done.result()  # the chaos or a publisher failed: say how
        return code
    finally:
        for app in apps:
            await app.close()


def report(run: Run, record: Record, logs: CountLogs, workdir: Path, code: int, took: float) -> int:
    handled = set(record.counts)
    lost = run.published - handled
    duplicated = sum(1 for c in record.counts.values() if c > 1)
    extra = sum(record.counts.values()) - len(handled)
    outage, loud, restarts = worker_lines(workdir / "workers.log")
    for line in run.events:
        print(f"  {line}")
    print(
        f"published (publish returned): {len(run.published)}  failed publishes: {len(run.failed)}"
    )
    print(f"lost: {len(lost)}")
    print(f"duplicated: {duplicated} ids handled more than once ({extra} extra handlings)")
    resumed = "n/a" if run.resumed_after is None else f"{run.resumed_after:.2f} s"
    print(f"handling resumed {resumed} after the kill; longest pause {run.longest_pause:.2f} s")
    print(f"worker restarts: {restarts}; worker WARNING/ERROR lines: {loud}, about the outage:")
    for line in outage:
        print(f"    {line.split(' ', 2)[-1][:160]}")
    print(f"publishers' WARNING/ERROR lines: {dict(logs.counts)}")
    for line in logs.samples:
        print(f"    {line[:160]}")
    print(f"time: {took:.1f} s; logs in {workdir}")
    for failure in run.failed[:5]:
        print(f"  FAILED {failure}")
    if lost:
        print(f"LOST ids (first 20): {sorted(lost, key=int)[:20]}")
        return 1
    return code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", "-n", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=300.0, help="publishes a second, in all")
    parser.add_argument("--publishers", type=int, default=2, help="publishing apps")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--down", type=float, default=15.0, help="seconds the leader stays down")
    parser.add_argument(
        "--kill-after", type=float, default=0.3, help="share of the publishing time"
    )
    parser.add_argument("--publish-timeout", type=float, default=30.0)
    parser.add_argument("--stall", type=float, default=120.0, help="give up after no handling")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    random.seed(args.seed)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(soak(args)))


if __name__ == "__main__":
    main()
