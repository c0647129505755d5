"""The command: parse the sizes, run every benchmark on both sides against the same
broker, print the table of ratios and write the JSON results."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika

from . import baseline, procs, results_rows, rw, scaling

__all__ = ["Row", "main"]

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
SECTIONS = ("publish", "consume", "metrics", "slow", "rpc", "processes", "results")


@dataclass
class Row:
    queue_type: str
    name: str
    unit: str
    baseline: float
    rabbitworker: float
    higher_is_better: bool
    target: float | None  # on the ratio rabbitworker / baseline

    @property
    def ratio(self) -> float:
        return self.rabbitworker / self.baseline if self.baseline else float("nan")

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="rabbitworker against plain aio-pika on the same broker, in one run.",
    )
    p.add_argument("--url", default=os.environ.get("RABBITWORKER_URL", DEFAULT_URL))
    p.add_argument("--queue-types", default="quorum,classic", help="comma-separated")
    p.add_argument("--messages", type=int, default=20_000, help="publish and consume rows")
    p.add_argument("--slow-messages", type=int, default=5_000, help="the 20 ms handler row")
    p.add_argument("--rpc-calls", type=int, default=500, help="sequential calls for latency")
    p.add_argument("--rpc-in-flight", type=int, default=100)
    p.add_argument("--batch", type=int, default=100, help="concurrent publishes per batch")
    p.add_argument(
        "--redis",
        default=os.environ.get("RABBITWORKER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="the Redis of the results rows",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs per row; the median is kept")
    p.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated: {','.join(SECTIONS)}"
    )
    p.add_argument("--quick", action="store_true", help="a small run to check the setup")
    p.add_argument(
        "--memory", action="store_true", help="only measure a worker's RSS over a long run"
    )
    p.add_argument("--memory-messages", type=int, default=200_000)
    p.add_argument(
        "--scaling", action="store_true", help="only the scaling curves (depth, delays, ...)"
    )
    p.add_argument("--scale", type=float, default=1.0, help="--scaling sizes times this")
    p.add_argument(
        "--curves",
        default=",".join(scaling.CURVES),
        help=f"with --scaling, comma-separated: {','.join(scaling.CURVES)}",
    )
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: results/)")
    args = p.parse_args(argv)
    if args.quick:
        args.messages, args.slow_messages, args.rpc_calls = 4_000, 1_000, 100
    args.queue_types = [q.strip() for q in args.queue_types.split(",") if q.strip()]
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    args.curves = {s.strip() for s in args.curves.split(",") if s.strip()}
    unknown = args.only - set(SECTIONS) or set(args.queue_types) - {"quorum", "classic"}
    if unknown:
        p.error(f"unknown value(s): {', '.join(sorted(unknown))}")
    return args


async def machine(url: str) -> dict[str, Any]:
    connection = await aio_pika.connect(url)
    try:
        props = connection.transport.connection.server_properties  # type: ignore[union-attr]
        version = props.get("version")
        broker = version.decode() if isinstance(version, bytes) else str(version)
    finally:
        await connection.close()
    mem_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "rabbitmq": broker,
        "python": platform.python_version(),
        "aio_pika": aio_pika.__version__,
        "platform": platform.platform(),
    }


async def medians(
    repeat: int, base: Callable[[], Awaitable[float]], ours: Callable[[], Awaitable[float]]
) -> tuple[float, float]:
    """The median of each side over `repeat` runs, the sides taking turns (and the
    side that goes first alternating, run by run) so that a change in the machine's
    load, or a warm-up, hits both alike."""
    a, b = [], []
    for i in range(repeat):
        if i % 2 == 0:
            a.append(await base())
            b.append(await ours())
        else:
            b.append(await ours())
            a.append(await base())
    return statistics.median(a), statistics.median(b)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


async def bench_queue_type(args: argparse.Namespace, qt: str, rows: list[Row]) -> dict[str, Any]:
    url, r = args.url, args.repeat
    extra: dict[str, Any] = {}

    def add(
        name: str, unit: str, base: float, ours: float, higher: bool, target: float | None
    ) -> None:
        row = Row(qt, name, unit, base, ours, higher, target)
        rows.append(row)
        print(f"  {name:<36} aio-pika {base:>9.1f}  rabbitworker {ours:>9.1f} {unit:<8}", end="")
        print(f" {row.ratio:.2f}x")

    if "publish" in args.only:
        n, b = args.messages, args.batch
        base, ours = await medians(
            r, lambda: baseline.publish(url, qt, n, b), lambda: rw.publish(url, qt, n, b)
        )
        add(f"publish, confirmed, {b} at a time", "msg/s", base, ours, True, 1.0)
        one = min(n, 2_000)  # sequential: a rate, so fewer messages do
        base, ours = await medians(
            r, lambda: rw.publish_one_by_one(url, qt, one), lambda: rw.publish_bulk(url, qt, n)
        )
        add("publish_many (baseline: app.publish, one at a time)", "msg/s", base, ours, True, 3.0)
    if "consume" in args.only:
        n = args.messages
        base, ours = await medians(
            r, lambda: baseline.consume(url, qt, n), lambda: rw.consume(url, qt, n)
        )
        add("consume, no-op handler", "msg/s", base, ours, True, 1.0)
        base, ours = await medians(
            r, lambda: baseline.consume_batch_acks(url, qt, n), lambda: rw.consume(url, qt, n)
        )
        add("consume, no-op (baseline: acks 25 at a time)", "msg/s", base, ours, True, 0.9)
    if "metrics" in args.only:
        n = args.messages
        cpu_off: list[float] = []
        cpu_on: list[float] = []
        base, ours = await medians(
            r,
            lambda: rw.consume(url, qt, n, cpu=cpu_off),
            lambda: rw.consume(url, qt, n, metrics=True, cpu=cpu_on),
        )
        add("consume no-op, metrics on (baseline: off)", "msg/s", base, ours, True, 0.9)
        # CPU time moves less than throughput when other jobs share the cores.
        add("  the same, worker CPU per message", "us/msg", statistics.median(cpu_off),
            statistics.median(cpu_on), False, round(1 / 0.9, 2))  # fmt: skip
    if "slow" in args.only:
        n = args.slow_messages
        base, ours = await medians(
            r, lambda: baseline.consume(url, qt, n, 0.02), lambda: rw.consume(url, qt, n, 0.02)
        )
        add("consume, 20 ms handler, 100 at once", "msg/s", base, ours, True, 0.95)
    if "rpc" in args.only:
        lat_base: list[float] = []
        lat_ours: list[float] = []
        for i in range(r):
            sides = [(lat_base, baseline.rpc_latency), (lat_ours, rw.rpc_latency)]
            for into, run in sides if i % 2 == 0 else sides[::-1]:
                into += await run(url, qt, args.rpc_calls)
        ms = 1000.0
        add("RPC latency p50, sequential", "ms", percentile(lat_base, 50) * ms,
            percentile(lat_ours, 50) * ms, False, 1.2)  # fmt: skip
        add("RPC latency p99, sequential", "ms", percentile(lat_base, 99) * ms,
            percentile(lat_ours, 99) * ms, False, None)  # fmt: skip
        calls, k = args.rpc_calls * 4, args.rpc_in_flight
        base, ours = await medians(
            r,
            lambda: baseline.rpc_concurrent(url, qt, calls, k),
            lambda: rw.rpc_concurrent(url, qt, calls, k),
        )
        add(f"RPC throughput, {k} in flight", "calls/s", base, ours, True, 1.0)
    if "results" in args.only:
        n = args.messages
        base, ours = await medians(
            r,
            lambda: rw.consume(url, qt, n),
            lambda: rw.consume(url, qt, n, results=args.redis),
        )
        add("consume no-op, tracked in Redis (baseline: untracked)", "msg/s", base, ours, True, 0.6)
        plain, read = await results_rows.result_latency(url, qt, args.redis, args.rpc_calls)
        add("app.result() of a finished task, p50 (baseline: Redis HGET)", "ms",
            percentile(plain, 50) * 1000, percentile(read, 50) * 1000, False, None)  # fmt: skip
    if "processes" in args.only:
        n = args.messages
        runs: dict[tuple[str, int], procs.ProcessRun] = {}
        for count in (1, 2):
            results: dict[str, list[procs.ProcessRun]] = {"aio-pika": [], "rabbitworker": []}
            for i in range(r):
                order = ["aio-pika", "rabbitworker"] if i % 2 == 0 else ["rabbitworker", "aio-pika"]
                for side in order:
                    results[side].append(await procs.consume_processes(url, qt, n, count, side))
            for side, done in results.items():
                runs[side, count] = sorted(done, key=lambda x: x.rate)[len(done) // 2]
        for count in (1, 2):
            label = "1 process" if count == 1 else f"{count} processes"
            add(f"consume, no-op, {label}", "msg/s", runs["aio-pika", count].rate,
                runs["rabbitworker", count].rate, True, 1.0)  # fmt: skip
        for (side, count), run in runs.items():
            if run.handled != n:
                # A process stopped with deliveries still waiting for a slot hands
                # them back; the rate counts only those it handled.
                print(f"  note: {side} x{count} handled {run.handled} of {n}")
        ours_scale = runs["rabbitworker", 2].rate / runs["rabbitworker", 1].rate
        base_scale = runs["aio-pika", 2].rate / runs["aio-pika", 1].rate
        bound = "the broker (and the 2 shared cores)" if base_scale < 1.3 else "not the broker"
        extra["processes"] = {
            "rabbitworker_2_over_1": ours_scale,
            "aio_pika_2_over_1": base_scale,
            "limit": bound,
            "per_process_counts": {f"{s}/{c}": v.per_process for (s, c), v in runs.items()},
        }
        print(
            f"  --processes 2 / 1: rabbitworker {ours_scale:.2f}x, aio-pika {base_scale:.2f}x"
            f" (target 1.30x); limit: {bound}"
        )
    return extra


def table(rows: list[Row], info: dict[str, Any], extras: dict[str, Any]) -> str:
    # The baseline is plain aio-pika unless the row names another.
    head = ("queue", "benchmark", "unit", "baseline", "rabbitworker", "ratio", "target")
    body = []
    for row in rows:
        if row.target is None:
            target = ""
        else:
            sign = ">=" if row.higher_is_better else "<="
            target = f"{sign} {row.target:.2f}x {'ok' if row.met else 'MISSED'}"
        body.append((row.queue_type, row.name, row.unit, f"{row.baseline:,.1f}",
                     f"{row.rabbitworker:,.1f}", f"{row.ratio:.2f}x", target))  # fmt: skip
    for qt, extra in extras.items():
        scale = extra.get("processes")
        if scale:
            ok = scale["rabbitworker_2_over_1"] >= 1.3
            body.append((qt, "--processes 2 over 1 process", "ratio",
                         f"{scale['aio_pika_2_over_1']:.2f}x",
                         f"{scale['rabbitworker_2_over_1']:.2f}x", "",
                         f">= 1.30x {'ok' if ok else 'MISSED'} ({scale['limit']})"))  # fmt: skip
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    right = {3, 4, 5}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [
        f"{info['date']}  nproc {info['nproc']}  RAM {info['ram_gib']} GiB  "
        f"RabbitMQ {info['rabbitmq']}  Python {info['python']}  aio-pika {info['aio_pika']}",
        "",
        line(head),
        line(tuple("-" * w for w in widths)),
        *(line(b) for b in body),
    ]
    return "\n".join(out)


def _jsonable(value: Any) -> Any:
    if isinstance(value, set):
        return sorted(value)
    return str(value) if isinstance(value, Path) else value


async def amain(args: argparse.Namespace) -> None:
    info = await machine(args.url)
    started = time.perf_counter()
    arguments = {k: _jsonable(v) for k, v in vars(args).items() if k != "url"}
    results: dict[str, Any] = {"machine": info, "arguments": arguments}
    if args.scaling:
        results["scaling"] = await scaling.run(args.url, args.queue_types, args.scale, args.curves)
    elif args.memory:
        for qt in args.queue_types:
            print(f"{qt}: a worker's memory over {args.memory_messages:,} messages")
            mem = await procs.worker_memory(args.url, qt, args.memory_messages)
            results.setdefault("memory", {})[qt] = mem
            print(
                f"  handled {mem['handled']:,} in {mem['seconds']:.1f} s; RSS start "
                f"{mem['rss_start_mib']:.1f} MiB, after 10% {mem['rss_after_10pct_mib']:.1f} MiB, "
                f"end {mem['rss_end_mib']:.1f} MiB, peak {mem['rss_peak_mib']:.1f} MiB"
            )
    else:
        rows: list[Row] = []
        extras: dict[str, Any] = {}
        for qt in args.queue_types:
            print(f"{qt} queues:")
            extras[qt] = await bench_queue_type(args, qt, rows)
        print()
        print(table(rows, info, extras))
        results["rows"] = [
            {**asdict(row), "ratio": row.ratio, "target_met": row.met} for row in rows
        ]
        results["extra"] = extras
    results["seconds"] = time.perf_counter() - started
    out = args.out or RESULTS / f"bench-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\ntook {results['seconds']:.0f} s; results written to {out}")


def main(argv: list[str] | None = None) -> None:
    args = parse(argv if argv is not None else sys.argv[1:])
    asyncio.run(amain(args))
