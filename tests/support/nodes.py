"""Extra RabbitMQ nodes on this machine, alone or as a cluster, for tests that need a broker
of their own; the shared node (rabbit@localhost:5672) is never touched.

Manual soaks: `python tests/support/nodes.py start [--nodes 3] [--set KEY=VALUE ...]`, `status`,
`stop ID...`, `stop --stale` (nodes whose test run is gone) or `stop --all`.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import pytest

__all__ = [
    "NodeError",
    "RabbitCluster",
    "RabbitNode",
    "make_rabbit_node",
    "rabbit_cluster",
    "rabbit_cluster_for_module",
    "rabbit_node",
    "stop_harness_nodes",
]

PREFIX = "rwtnode"  # nodes are rwtnode<hex id>n<k>@localhost, with their files in /tmp/rwtnode<id>
NAME = re.compile(rf"^{PREFIX}([0-9a-f]+)n\d+@localhost$")
ROOT = Path(tempfile.gettempdir())
MANIFEST = "cluster.json"
BROKER_USER = "rabbitmq"
BY_HAND = "cli"  # the owner of nodes started from the command line: they are never stale
FILES = {  # RABBITMQ_<key>: a file or directory of the node's own
    "MNESIA_BASE": "mnesia", "LOG_BASE": "log", "PID_FILE": "pid",
    "ENABLED_PLUGINS_FILE": "enabled_plugins", "CONFIG_FILE": "rabbitmq.conf",
    "ADVANCED_CONFIG_FILE": "advanced.config", "CONF_ENV_FILE": "rabbitmq-env.conf",
}  # fmt: skip
HOW_TO_INSTALL = (
    "rabbitmq-server is not installed, and these tests start RabbitMQ nodes of their own: "
    "install it (`apt-get install rabbitmq-server`)"
)
Config = Mapping[str, str | int | float | bool]
T = TypeVar("T")


class NodeError(RuntimeError):
    """A harness node did not start, stop or answer as asked."""


def _script(name: str) -> str:
    # The Debian/RPM packages put a wrapper on PATH that would `su` and, run as the broker
    # user, write to the shared node's startup log: use the real script behind it.
    packaged = Path("/usr/lib/rabbitmq/bin") / name
    found = str(packaged) if packaged.exists() else shutil.which(name)
    if found is None:
        raise NodeError(HOW_TO_INSTALL)
    return found


def _as_broker(**env: str) -> dict[str, Any]:
    # subprocess options: the broker user (when we are root) and its home, whose Erlang
    # cookie the shared node and the CLI tools use too.
    root = os.geteuid() == 0
    home = pwd.getpwnam(BROKER_USER).pw_dir if root else os.environ["HOME"]
    path = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    env = {"PATH": path, "HOME": home, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", **env}
    user = {"user": BROKER_USER, "group": BROKER_USER, "extra_groups": []} if root else {}
    return {"env": env, **user}


def _free_ports(count: int) -> list[int]:
    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(count)]  # all distinct
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _parallel(function: Callable[[T], object], items: Iterable[T]) -> None:
    items = list(items)
    pool = ThreadPoolExecutor(max_workers=max(1, len(items)))
    try:
        list(pool.map(function, items))
    finally:  # on a failure or Ctrl-C, let the caller stop the nodes that are still booting
        pool.shutdown(wait=False, cancel_futures=True)


def _beam_pids() -> dict[str, int]:
    # By environment: RabbitMQ 3.10 does not put the node name on the command line.
    found: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or (proc / "comm").read_text() != "beam.smp\n":
                continue
            environ = (proc / "environ").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        for key, _, value in (entry.partition("=") for entry in environ):
            if key == "RABBITMQ_NODENAME" and NAME.match(value):
                found[value] = int(proc.name)
    return found


def _dead(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def _owner_token(pid: int | None = None) -> str:
    # pid and start time, so that a recycled pid does not pass for a test run that is gone
    pid = os.getpid() if pid is None else pid
    try:
        start = (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        start = "gone"
    return f"{pid}:{start}"


def _owner_alive(owner: str) -> bool:
    pid = owner.partition(":")[0]
    return owner == BY_HAND or (pid.isdigit() and _owner_token(int(pid)) == owner)


def _amqp_login(url: str) -> bool:
    async def login() -> None:
        await (await aio_pika.connect(url, timeout=5)).close()

    # A thread of its own, so that this works whether or not the caller runs an event loop.
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            pool.submit(asyncio.run, login()).result()
        except Exception:
            return False
    return True


def _wait(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise NodeError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.1)


class RabbitNode:
    """One RabbitMQ node with its own ports, data, logs and rabbitmq.conf under `home`."""

    def __init__(self, name: str, home: Path, *, amqp_port: int, dist_port: int, config: Config):
        self.name, self.home, self.config = name, home, dict(config)
        self.amqp_port, self.dist_port = amqp_port, dist_port
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"RabbitNode({self.name}, amqp port {self.amqp_port})"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    def _write_files(self) -> None:
        self.home.mkdir(exist_ok=True)
        settings = {"listeners.tcp.1": f"127.0.0.1:{self.amqp_port}", **self.config}
        values = {k: str(v).lower() if isinstance(v, bool) else v for k, v in settings.items()}
        (self.home / "rabbitmq.conf").write_text("".join(f"{k} = {v}\n" for k, v in values.items()))
        (self.home / "rabbitmq-env.conf").write_text("# not /etc/rabbitmq/rabbitmq-env.conf\n")
        (self.home / "enabled_plugins").write_text("[].\n")
        if os.geteuid() == 0:
            for path in [self.home, *self.home.rglob("*")]:
                shutil.chown(path, BROKER_USER, BROKER_USER)

    def start(self, *, timeout: float = 120) -> None:
        """Start the node (on its data, if it has some) and wait until it takes AMQP logins;
        raises NodeError if it exits or is not ready in time."""
        if self.is_running():
            return
        self._write_files()
        options = _as_broker(
            **{f"RABBITMQ_{key}": str(self.home / path) for key, path in FILES.items()},
            RABBITMQ_NODENAME=self.name, RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )  # fmt: skip
        with (self.home / "server.out").open("ab") as out:
            self._proc = proc = subprocess.Popen(
                [_script("rabbitmq-server")], cwd=self.home, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **options,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not _port_open(self.amqp_port):
            if proc.poll() is not None:
                with contextlib.suppress(OSError):  # unless stopped meanwhile
                    tail = (self.home / "server.out").read_text(errors="replace").strip()
                    raise NodeError(f"{self.name} exited with {proc.returncode}: {tail[-600:]}")
                raise NodeError(f"{self.name} exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise NodeError(f"{self.name} did not listen within {timeout:.0f} s")
            time.sleep(0.1)
        self.ctl("await_startup", "--timeout", str(int(max(deadline - time.monotonic(), 5))))
        _wait(lambda: _amqp_login(self.url), timeout=10, what=f"AMQP login on {self.name}")

    def ctl(self, *args: str, timeout: float = 120) -> str:
        """Run `rabbitmqctl -q -n <this node> *args` and return its output; raises NodeError."""
        command = [_script("rabbitmqctl"), "-q", "-n", self.name, *args]
        try:
            done = subprocess.run(
                command, cwd="/", capture_output=True, text=True, timeout=timeout, **_as_broker()
            )
        except subprocess.TimeoutExpired:
            raise NodeError(f"{' '.join(args)}: no answer within {timeout:.0f} s") from None
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines() or ["(no output)"]
            raise NodeError(f"{' '.join(args)} on {self.name}: {lines[0]}")
        return str(done.stdout)

    def os_pid(self) -> int | None:
        """The OS pid of this node's Erlang VM, None when it does not run."""
        return _beam_pids().get(self.name)

    def is_running(self) -> bool:
        """Whether this node's Erlang VM is alive (booted or not)."""
        return self.os_pid() is not None

    def stop(self, *, keep_data: bool = False, timeout: float = 60) -> None:
        """Stop the node gracefully (`rabbitmqctl stop`, or kill it if that fails), then remove
        its directory unless `keep_data`."""
        if self.is_running():
            try:
                self.ctl("stop", timeout=timeout)
            except NodeError:
                self.kill()
        self._reap(timeout)
        if not keep_data:
            shutil.rmtree(self.home, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL this node's Erlang VM, as a crash would; no other process is touched."""
        if (pid := self.os_pid()) is not None:
            os.kill(pid, signal.SIGKILL)
            # Gone from _beam_pids() while it is still closing its sockets: wait for its end.
            _wait(lambda: _dead(pid), timeout=30, what=f"{self.name} dying")
        elif self._proc is not None and self._proc.poll() is None:
            # Still booting, with no VM to find yet; its session holds this node's processes only.
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._reap(30)

    def restart(self, *, timeout: float = 120) -> None:
        """Start the node again on its data and ports, so that it rejoins its cluster (after
        a graceful stop if it runs)."""
        self.stop(keep_data=True)
        self.start(timeout=timeout)

    def _reap(self, timeout: float) -> None:
        _wait(lambda: not self.is_running(), timeout=timeout, what=f"{self.name} stopping")
        if self._proc is not None:
            self._proc.wait(timeout)
            self._proc = None


class RabbitCluster:
    """`size` nodes under one directory, started in parallel, the others joined to the first
    (size 1: a standalone node). `with RabbitCluster(3) as cluster:`, or start() and stop()."""

    def __init__(self, size: int = 3, *, config: Config | None = None, owner: str = "") -> None:
        ident = f"{PREFIX}{secrets.token_hex(4)}"
        self.home, self.owner = ROOT / ident, owner or _owner_token()
        ports = _free_ports(2 * size)
        self.nodes = [
            RabbitNode(f"{ident}n{k}@localhost", self.home / f"n{k}", amqp_port=ports[2 * k - 2],
                       dist_port=ports[2 * k - 1], config=config or {})
            for k in range(1, size + 1)
        ]  # fmt: skip

    def __enter__(self) -> RabbitCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def multi_host_url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{node.amqp_port}" for node in self.nodes)
        return f"amqp://guest:guest@{hosts}/"

    def start(self, *, timeout: float = 180) -> RabbitCluster:
        """Start every node and join them; raises NodeError, after removing everything."""
        nodes = [{"name": n.name, "amqp_port": n.amqp_port} for n in self.nodes]
        # Its manifest in place before its name shows, so a sweep never takes it for a leftover.
        building = Path(tempfile.mkdtemp(prefix=f".{self.home.name}.", dir=ROOT))
        (building / MANIFEST).write_text(json.dumps({"owner": self.owner, "nodes": nodes}))
        building.chmod(0o755)  # the broker user must get through
        building.rename(self.home)
        if self.owner != BY_HAND:
            _LIVE.add(self)
        try:
            _parallel(lambda node: node.start(timeout=timeout), self.nodes)
            for node in self.nodes[1:]:  # one at a time: joining in parallel saves only 1 s
                self._join(node, self.nodes[0])
        except BaseException:
            self.stop()
            raise
        return self

    def _join(self, node: RabbitNode, to: RabbitNode) -> None:
        for args in (["stop_app"], ["join_cluster", to.name], ["start_app"]):
            node.ctl(*args)

    def node_by_name(self, name: str) -> RabbitNode:
        """The node called `name`; raises KeyError."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def ask(self, *args: str) -> str:
        """`rabbitmqctl *args` on the first running node that answers; raises NodeError."""
        problems = []
        for node in filter(RabbitNode.is_running, self.nodes):
            try:
                return node.ctl(*args)
            except NodeError as error:
                problems.append(str(error))
        raise NodeError("; ".join(problems) or "no node of the cluster runs")

    def running_nodes(self) -> set[str]:
        """The names of the nodes that `cluster_status` reports running."""
        return set(json.loads(self.ask("cluster_status", "--formatter=json"))["running_nodes"])

    def _queue(self, queue: str) -> dict[str, Any]:
        rows = json.loads(self.ask("list_queues", "name", "leader", "members", "--formatter=json"))
        for row in rows:
            if row["name"] == queue:
                return dict(row)
        raise NodeError(f"no queue {queue!r} in the cluster")

    def leader_of(self, queue: str) -> RabbitNode:
        """The node leading quorum queue `queue` (default vhost); raises NodeError, also while
        no leader is known."""
        leader = self._queue(queue)["leader"]
        try:
            return self.node_by_name(leader)
        except KeyError:
            raise NodeError(f"queue {queue!r} has no leader in the cluster: {leader!r}") from None

    def members_of(self, queue: str) -> list[RabbitNode]:
        """The nodes holding a replica of quorum queue `queue`; raises NodeError."""
        return [self.node_by_name(name) for name in self._queue(queue)["members"]]

    def heal(self) -> None:
        """Start every node that is down again, joining it anew if its data was removed."""
        down = [node for node in self.nodes if not node.is_running()]
        fresh = [node for node in down if not (node.home / "mnesia").exists()]
        _parallel(RabbitNode.start, [node for node in down if node not in fresh])
        if not fresh:
            return
        anchor = next((node for node in self.nodes if node not in fresh), None)
        if anchor is None:
            raise NodeError("every node of the cluster lost its data: start a new cluster")
        for node in fresh:  # forgotten first, or its peers would not boot
            anchor.ctl("forget_cluster_node", node.name)
        _parallel(RabbitNode.start, fresh)
        for node in fresh:
            self._join(node, anchor)

    def stop(self) -> None:
        """Kill every node (their data is thrown away: no need to be graceful) and remove the
        cluster's directory."""
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.home, ignore_errors=True)
        _LIVE.discard(self)


_LIVE: set[RabbitCluster] = set()


@atexit.register
def _stop_left_over() -> None:
    for cluster in list(_LIVE):  # a run interrupted beyond its fixtures' teardown
        cluster.stop()


def _manifest(home: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((home / MANIFEST).read_text()))
    except (OSError, ValueError):
        return {"owner": "unknown", "nodes": []}


def stop_harness_nodes(*, stale_only: bool = True, ids: Collection[str] = ()) -> list[str]:
    """Kill harness nodes and remove their directories: those of clusters `ids`, else those
    whose test run is gone (or all, unless `stale_only`). Returns the nodes' names."""
    pids = _beam_pids()
    homes = set(ROOT.glob(f"{PREFIX}*"))
    homes |= {ROOT / f"{PREFIX}{match[1]}" for name in pids if (match := NAME.match(name))}
    stopped: list[str] = []
    for home in sorted(homes):
        if ids and home.name not in ids:
            continue
        if not ids and stale_only and _owner_alive(_manifest(home)["owner"]):
            continue
        for name, pid in pids.items():
            if name.startswith(f"{home.name}n"):
                os.kill(pid, signal.SIGKILL)
                stopped.append(name)
        shutil.rmtree(home, ignore_errors=True)
    return stopped


_swept: list[list[str]] = []


def _require_server() -> None:
    try:
        _script("rabbitmq-server")
    except NodeError:
        ci = " (CI=true)" if os.environ.get("CI") else ""
        pytest.fail(HOW_TO_INSTALL + ci, pytrace=False)  # never skipped, on CI or off it
    if not _swept:  # once per test run: nodes left behind by runs that died
        _swept.append(stop_harness_nodes())


@pytest.fixture
def make_rabbit_node() -> Iterator[Callable[..., RabbitNode]]:
    """Factory: `make_rabbit_node({"consumer_timeout": 5000})` starts a standalone node with
    these rabbitmq.conf settings; it is removed after the test."""
    _require_server()
    clusters: list[RabbitCluster] = []

    def factory(config: Config | None = None) -> RabbitNode:
        clusters.append(RabbitCluster(1, config=config))
        return clusters[-1].start().nodes[0]

    try:
        yield factory
    finally:
        for cluster in clusters:
            cluster.stop()


@pytest.fixture
def rabbit_node(
    make_rabbit_node: Callable[..., RabbitNode], request: pytest.FixtureRequest
) -> RabbitNode:
    """A standalone node; rabbitmq.conf settings by indirect parametrization, e.g.
    `@pytest.mark.parametrize("rabbit_node", [{"consumer_timeout": 5000}], indirect=True)`."""
    return make_rabbit_node(getattr(request, "param", None))


@pytest.fixture(scope="module")
def rabbit_cluster_for_module() -> Iterator[RabbitCluster]:
    """A 3-node cluster shared by the tests of a module (one takes about 20 s to start)."""
    _require_server()
    with RabbitCluster(3) as cluster:
        yield cluster


@pytest.fixture
def rabbit_cluster(rabbit_cluster_for_module: RabbitCluster) -> Iterator[RabbitCluster]:
    """The module's 3-node cluster; nodes that a test killed or stopped are started again
    after it."""
    yield rabbit_cluster_for_module
    rabbit_cluster_for_module.heal()


def _status() -> None:
    running = _beam_pids()
    for home in sorted(ROOT.glob(f"{PREFIX}*")):
        manifest = _manifest(home)
        gone = "" if _owner_alive(manifest["owner"]) else " (gone)"
        print(f"{home.name}  owner {manifest['owner']}{gone}")
        for node in manifest["nodes"]:
            pid = running.get(node["name"], "none: down")
            print(f"  {node['name']}  amqp port {node['amqp_port']}  pid {pid}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start nodes that run until `stop`")
    start.add_argument("--nodes", type=int, default=1)
    start.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    commands.add_parser("status", help="list harness nodes")
    stop = commands.add_parser("stop", help="stop harness nodes")
    stop.add_argument("ids", nargs="*", help="cluster ids, as `status` shows them")
    which = stop.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="every harness node, whoever owns it")
    which.add_argument("--stale", action="store_true", help="nodes whose test run is gone")
    args = parser.parse_args(argv)
    if args.command == "start":
        config = dict(item.split("=", 1) for item in args.set)
        cluster = RabbitCluster(args.nodes, config=config, owner=BY_HAND).start()
        print(f"{cluster.home.name}  {cluster.multi_host_url}")
    elif args.command == "status":
        _status()
    elif args.all or args.stale or args.ids:
        stopped = stop_harness_nodes(stale_only=not args.all, ids=args.ids)
        print("\n".join(stopped) or "no node to stop")
    else:
        stop.error("stop what? cluster ids, --stale or --all")


if __name__ == "__main__":
    main()
