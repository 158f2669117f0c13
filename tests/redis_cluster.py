"""A real Redis Cluster on 127.0.0.1, for the tests of tests/test_redis_cluster.py.

``cluster()`` starts ``redis-server`` processes with ``cluster-enabled yes``
on free ports in a directory of the test's, joins them with ``redis-cli
--cluster create``, waits until every node agrees the cluster is up, and
kills every process (``SIGKILL``, each in a process group of its own) when
the block ends, whatever happened. Every step has a deadline.

``Cluster.reshard`` moves slots, with their keys, from one master to another
(``redis-cli --cluster reshard``: ``CLUSTER SETSLOT ... MIGRATING/IMPORTING``,
``MIGRATE`` of each key, ``SETSLOT ... NODE``), as an operator scaling a
cluster would, while the tests' requests go on. ``Cluster.kill`` ends a
master with ``SIGKILL``, and ``Cluster.wait_for_failover`` waits until its
replica has taken its slots over.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import HOST, free_port

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
CLIENT_CLASS = "idempotency.backends.redis.cluster.ClusterClient"


@dataclass
class Node:
    port: int
    process: subprocess.Popen[bytes]

    def cli(self, *arguments: str, timeout: float = 10) -> str:
        """``redis-cli`` against this node; its output."""
        assert REDIS_CLI is not None
        done = subprocess.run(
            [REDIS_CLI, "-h", HOST, "-p", str(self.port), *arguments],
            capture_output=True,
            timeout=timeout,
            check=True,
        )
        return done.stdout.decode()

    def info(self) -> dict[str, str]:
        lines = self.cli("cluster", "info").splitlines()
        return dict(line.strip().split(":", 1) for line in lines if ":" in line)


@dataclass
class Cluster:
    nodes: list[Node]
    directory: Path
    durations: dict[str, float] = field(default_factory=dict)

    @property
    def locations(self) -> list[str]:
        return [f"redis://{HOST}:{node.port}" for node in self.nodes]

    def caches(self, alias: str = "cluster", **options: object) -> dict:
        """``settings.CACHES`` plus a django-redis cache ``alias`` on this
        cluster, with the cluster client."""
        from django.conf import settings

        return {
            **settings.CACHES,
            alias: {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": self.locations,
                "OPTIONS": {
                    "CLIENT_CLASS": CLIENT_CLASS,
                    "SOCKET_CONNECT_TIMEOUT": 1,
                    "SOCKET_TIMEOUT": 1,
                    **options,
                },
            },
        }

    def masters(self) -> dict[str, tuple[Node, list[tuple[int, int]]]]:
        """Each master's id, node and slot ranges, from ``CLUSTER NODES``."""
        by_port = {node.port: node for node in self.nodes}
        found = {}
        for line in self.nodes[0].cli("cluster", "nodes").splitlines():
            node_id, address, flags, *rest = line.split()
            if "master" not in flags.split(","):
                continue
            port = int(address.split("@")[0].rsplit(":", 1)[1])
            ranges = [
                (int(start), int(end or start))
                for start, _, end in (part.partition("-") for part in rest[5:])
                if not start.startswith("[")
            ]
            found[node_id] = (by_port[port], ranges)
        return found

    def owner(self, slot: int) -> str:
        """The id of the master that holds ``slot``."""
        for node_id, (_node, ranges) in self.masters().items():
            if any(start <= slot <= end for start, end in ranges):
                return node_id
        raise AssertionError(f"slot {slot} is held by no master")

    def replicated(self, timeout: float = 10) -> None:
        """Until every replica has every write its master has taken (Redis
        replicates asynchronously: what a replica lacks, a failover loses)."""

        def caught_up() -> bool:
            for node, _ranges in self.masters().values():
                info = dict(
                    line.split(":", 1)
                    for line in node.cli("info", "replication").split()
                    if ":" in line
                )
                offsets = {
                    part.split("=")[1]
                    for name, value in info.items()
                    if name.startswith("slave")
                    for part in value.split(",")
                    if part.startswith("offset=")
                }
                if offsets != {info["master_repl_offset"]}:
                    return False
            return True

        _wait(caught_up, time.monotonic() + timeout, "the replicas to catch up")

    def kill(self, node_id: str) -> Node:
        """``SIGKILL`` the master ``node_id``, as a crash would."""
        node, _ranges = self.masters()[node_id]
        os.killpg(node.process.pid, signal.SIGKILL)
        node.process.wait(timeout=10)
        return node

    def wait_for_failover(self, dead: str, timeout: float = 30) -> None:
        """Until every live node has marked ``dead`` failed and a replica
        holds its slots, with the cluster up again."""
        live = [node for node in self.nodes if node.process.poll() is None]

        def taken_over() -> bool:
            for node in live:
                if node.info().get("cluster_state") != "ok":
                    return False
                line = next(
                    line.split()
                    for line in node.cli("cluster", "nodes").splitlines()
                    if line.startswith(dead)
                )
                if "fail" not in line[2].split(",") or line[8:]:
                    return False
            return True

        _wait(taken_over, time.monotonic() + timeout, "a replica to take the dead master's slots")

    def reshard(self, source: str, target: str, slots: int, timeout: float = 60) -> float:
        """Move ``slots`` slots, and the keys in them, from master ``source``
        to master ``target``; return the seconds it took."""
        assert REDIS_CLI is not None
        started = time.monotonic()
        subprocess.run(
            [
                *(REDIS_CLI, "--cluster", "reshard", f"{HOST}:{self.nodes[0].port}"),
                *("--cluster-from", source, "--cluster-to", target),
                *("--cluster-slots", str(slots), "--cluster-yes"),
                # Keys move in small batches, so that the slots stay in
                # MIGRATING/IMPORTING a while and requests meet it.
                *("--cluster-pipeline", "5"),
            ],
            capture_output=True,
            timeout=timeout,
            check=True,
        )
        _wait_until_consistent(self.nodes, time.monotonic() + timeout)
        return time.monotonic() - started


def available() -> bool:
    return REDIS_SERVER is not None and REDIS_CLI is not None


@contextmanager
def cluster(
    directory: Path, masters: int = 3, replicas: int = 0, timeout: float = 30
) -> Iterator[Cluster]:
    """A cluster of ``masters`` masters, each with ``replicas`` replicas,
    until the block ends."""
    if not available():
        pytest.fail("Redis Cluster tests need redis-server and redis-cli (apt install redis)")
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    nodes: list[Node] = []
    try:
        for _ in range(masters * (1 + replicas)):
            nodes.append(_start(directory))
        for node in nodes:
            _wait(lambda node=node: _answers(node), deadline, f"node {node.port} to start")
        addresses = [f"{HOST}:{node.port}" for node in nodes]
        assert REDIS_CLI is not None
        subprocess.run(
            [
                *(REDIS_CLI, "--cluster", "create", *addresses),
                *("--cluster-replicas", str(replicas), "--cluster-yes"),
            ],
            capture_output=True,
            timeout=max(deadline - time.monotonic(), 1),
            check=True,
        )
        _wait_until_consistent(nodes, deadline)
        found = Cluster(nodes, directory, {"start": time.monotonic() - started})
        if replicas:
            found.replicated(timeout=max(deadline - time.monotonic(), 1))
        found.durations["start"] = time.monotonic() - started
        yield found
    finally:
        for node in nodes:
            if node.process.poll() is None:
                os.killpg(node.process.pid, signal.SIGKILL)
            node.process.wait(timeout=10)


def _start(directory: Path) -> Node:
    port, bus = free_port(), free_port()
    home = directory / f"node-{port}"
    home.mkdir()
    config = home / "redis.conf"
    config.write_text(
        "\n".join(
            [
                f"port {port}",
                f"bind {HOST}",
                f"cluster-port {bus}",
                "cluster-enabled yes",
                "cluster-config-file nodes.conf",
                # How long a master may be silent before the others fail
                # it over to its replica.
                "cluster-node-timeout 1000",
                'save ""',
                "appendonly no",
                f"dir {home}",
                f"logfile {home / 'redis.log'}",
            ]
        )
        + "\n"
    )
    assert REDIS_SERVER is not None
    process = subprocess.Popen(
        [REDIS_SERVER, str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return Node(port, process)


def _answers(node: Node) -> bool:
    assert node.process.poll() is None, f"redis-server on {node.port} exited"
    try:
        return node.cli("ping", timeout=2).strip() == "PONG"
    except subprocess.SubprocessError:
        return False


def _wait_until_consistent(nodes: list[Node], deadline: float) -> None:
    """Until every node says the cluster is up, with all its slots, and
    every node names the same owner for every slot."""

    def consistent() -> bool:
        infos = [node.info() for node in nodes]
        if any(
            info.get("cluster_state") != "ok"
            or info.get("cluster_slots_ok") != "16384"
            or info.get("cluster_known_nodes") != str(len(nodes))
            for info in infos
        ):
            return False
        views = {_slot_map(node) for node in nodes}
        return len(views) == 1

    _wait(consistent, deadline, "the cluster to agree on its slots")


def _slot_map(node: Node) -> str:
    lines = node.cli("cluster", "nodes").splitlines()
    # Each node's view of who holds what, without its own flags ("myself").
    return "\n".join(
        sorted(
            " ".join([line.split()[0], *line.split()[8:]])
            for line in lines
            if "master" in line.split()[2]
        )
    )


def _wait(condition, deadline: float, what: str) -> None:
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
