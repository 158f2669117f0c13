"""Redis Sentinel on 127.0.0.1, for tests/test_redis_sentinel.py: a master,
a replica and three sentinels (quorum 2), each a real ``redis-server`` or
``redis-sentinel`` process on a free port, in a temporary directory and a
process group of its own, killed when the block ends.

The sentinels are told of each other and of the replica in their
configuration (``known-sentinel``, ``known-replica``, their own ``myid``), so
that they need not wait for each other's hello messages (every 2 s) or the
master's ``INFO`` (every 10 s) to find them: the deployment is ready in a
fraction of a second, and a killed master is replaced in about three.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.servers import HOST, free_port

QUORUM = 2
# How long a master may stay silent before a sentinel holds it down. A
# second, so that a replica paused for a few hundred milliseconds
# (``failover_losing_writes``) is never held down itself.
DOWN_AFTER_MS = 1000
# How long a failover may take before another is tried (and how long before
# a failover that failed is tried again: twice this).
FAILOVER_TIMEOUT_MS = 3000
# No wait of this module lasts longer: a process that does not come up, a
# replica that does not sync, a failover that does not happen fails the test.
DEADLINE = 20.0


def sentinel_cache(service: str, ports: list[int], db: int = 0) -> dict[str, Any]:
    """The django-redis cache that finds the master of ``service`` through
    the sentinels on ``ports``, as docs/deployment.rst configures one."""
    return {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": f"redis://{service}/{db}",
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.SentinelClient",
            "CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory",
            "SENTINELS": [(HOST, port) for port in ports],
            "SOCKET_CONNECT_TIMEOUT": 0.5,
            "SOCKET_TIMEOUT": 0.5,
        },
    }


def wait_until(what: str, ready: Callable[[], bool], timeout: float = DEADLINE) -> float:
    """Poll ``ready`` until it holds; return the seconds it took."""
    started = time.monotonic()
    while True:
        try:
            if ready():
                return time.monotonic() - started
        except (redis.RedisError, OSError):
            pass  # not up yet, or down for now
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not after {timeout:g} s")
        time.sleep(0.02)


@dataclass
class Node:
    """One ``redis-server`` or ``redis-sentinel`` process."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(HOST, self.port, socket_timeout=timeout, socket_connect_timeout=timeout)

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: no shutdown, no save."""
        if self.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Deployment:
    """A master, its replicas and three sentinels that watch it as
    ``service``. ``master`` is whichever server the sentinels last promoted."""

    directory: Path
    service: str
    master: Node
    replicas: list[Node]
    sentinels: list[Node]
    # Every process started for it, which the end of deployment() kills.
    started: list[Node] = field(default_factory=list)
    killed: list[Node] = field(default_factory=list)
    killed_at: float = 0.0

    def cache(self) -> dict[str, Any]:
        """A django-redis cache that finds the master through these sentinels."""
        return sentinel_cache(self.service, [sentinel.port for sentinel in self.sentinels])

    def announced_masters(self) -> set[int]:
        """The master's port as each sentinel that answers names it."""
        ports = set()
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                address = client.sentinel_get_master_addr_by_name(self.service)
            ports.add(int(address[1]))
        return ports

    def kill_master(self) -> None:
        """kill -9 the master; a failover follows (``wait_for_failover``)."""
        self.killed_at = time.monotonic()
        self.master.kill()
        self.killed.append(self.master)

    def wait_for_failover(self) -> float:
        """Wait until every sentinel names a replica as the master, and that
        replica says it is one; return the seconds since the master was
        killed."""
        old = self.master
        candidates = {replica.port: replica for replica in self.replicas}

        def promoted() -> bool:
            ports = self.announced_masters()
            if len(ports) != 1 or ports.issubset({old.port}):
                return False
            (port,) = ports
            with candidates[port].client() as client:
                return client.role()[0] == b"master"

        wait_until(f"the sentinels promoting a replica of {old.name}", promoted)
        (port,) = self.announced_masters()
        self.master = candidates[port]
        self.replicas.remove(self.master)
        return time.monotonic() - self.killed_at

    def add_replica(self) -> Node:
        """Start another replica of the current master, and wait until it
        has the master's data and acknowledges its writes."""
        replica = _server(self.directory, f"replica{len(self.killed) + len(self.replicas) + 1}")
        self.started.append(replica)
        with replica.client() as client:
            client.replicaof(HOST, self.master.port)
        self.replicas.append(replica)
        _wait_in_sync(self.master, replica)
        return replica

    @contextmanager
    def failover_losing_writes(self) -> Iterator[None]:
        """Writes made in the block reach the master only, then the master
        is killed and the replica, which never got them, is promoted.

        The replica is paused (SIGSTOP) and the master closes its link (it
        cannot reconnect while paused), so nothing written in the block is
        sent to it; the master is killed before the replica resumes. Keep
        the block short: the sentinels hold a replica silent for
        DOWN_AFTER_MS down, and never promote one that is down.
        """
        (replica,) = self.replicas
        os.kill(replica.process.pid, signal.SIGSTOP)
        try:
            with self.master.client() as client:
                client.client_kill_filter(_type="replica")
                wait_until(
                    "the master dropping its replica",
                    lambda: client.info("replication")["connected_slaves"] == 0,
                )
            yield
            self.kill_master()
        finally:
            os.kill(replica.process.pid, signal.SIGCONT)


def _config(
    directory: Path, name: str, lines: list[str], port: int | None = None
) -> tuple[Path, Path, int]:
    port = port or free_port()
    log = directory / f"{name}.log"
    config = directory / f"{name}.conf"
    config.write_text(
        "\n".join(
            [
                f"port {port}",
                f"bind {HOST}",
                "protected-mode no",
                f"dir {directory}",
                f"logfile {log}",
                *lines,
            ]
        )
        + "\n"
    )
    return config, log, port


def _start(executable: str, name: str, config: Path, log: Path, port: int) -> Node:
    process = subprocess.Popen(
        [executable, str(config)],
        cwd=config.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    node = Node(name, port, process, log)
    try:
        wait_until(f"{name} listening on port {port}", lambda: _answers(node))
    except AssertionError:
        node.kill()
        raise AssertionError(f"{name} did not start:\n{node.output()}") from None
    return node


def _answers(node: Node) -> bool:
    if not node.alive():
        raise AssertionError(f"{node.name} exited:\n{node.output()}")
    with node.client(timeout=0.5) as client:
        return bool(client.ping())


def _server(directory: Path, name: str, *lines: str) -> Node:
    config, log, port = _config(
        directory,
        name,
        [
            # Memory only, and a replica's first sync streamed at once
            # rather than after the default five seconds' delay.
            'save ""',
            "appendonly no",
            "repl-diskless-sync yes",
            "repl-diskless-sync-delay 0",
            *lines,
        ],
    )
    return _start("redis-server", name, config, log, port)


def _wait_in_sync(master: Node, replica: Node) -> None:
    with replica.client() as client:
        wait_until(
            f"{replica.name} in sync with {master.name}",
            lambda: client.info("replication")["master_link_status"] == "up",
        )
    with master.client() as client:
        # Up is not enough: after a diskless sync the master streams nothing
        # to the replica until the replica's first acknowledgement, sent on
        # its once-a-second timer. Until then WAIT counts it for none of
        # the writes made since, so a write of the harness's own must be
        # acknowledged (WAIT on the connection that wrote it: a pipeline).
        wait_until(
            f"{replica.name} acknowledging the writes of {master.name}",
            lambda: _acknowledged_write(client),
        )


def _acknowledged_write(client: redis.Redis) -> bool:
    pipeline = client.pipeline(transaction=False)
    pipeline.set("harness:replication-check", secrets.token_hex(4))
    pipeline.wait(1, 100)
    return bool(pipeline.execute()[1] >= 1)


def _sentinel_ready(sentinel: Node, service: str, replicas: int) -> bool:
    with sentinel.client() as client:
        master = client.sentinel_master(service)
        known = client.sentinel_slaves(service)
    return (
        _up(master, "is_master")
        and master["num-other-sentinels"] == len(SENTINEL_IDS) - 1
        and master["num-slaves"] == replicas
        and all(_up(replica, "is_slave") for replica in known)
        and all(replica["master-link-status"] == "ok" for replica in known)
    )


def _up(instance: dict[str, Any], role: str) -> bool:
    """What a sentinel says of an instance: in ``role``, and reachable."""
    return bool(instance[role]) and not any(
        instance[flag] for flag in ("is_sdown", "is_odown", "is_disconnected")
    )


# Each sentinel's id, fixed so that each can be told of the others.
SENTINEL_IDS = [secrets.token_hex(20) for _ in range(3)]


@contextmanager
def deployment() -> Iterator[Deployment]:
    """A master, a replica in sync with it and three sentinels that know
    both (and each other), until the block ends; then every process is
    killed and the directory removed."""
    missing = [name for name in ("redis-server", "redis-sentinel") if not shutil.which(name)]
    if missing:
        raise AssertionError(f"{' and '.join(missing)} not installed (apt-get install redis)")
    directory = Path(tempfile.mkdtemp(prefix="idempotency-sentinel-"))
    # A name of its own: django-redis keeps its connection pools for the
    # life of the process by URL, and the URL names the service.
    service = f"idempotency-{secrets.token_hex(4)}"
    nodes: list[Node] = []
    try:
        master = _server(directory, "master")
        nodes.append(master)
        replica = _server(directory, "replica1", f"replicaof {HOST} {master.port}")
        nodes.append(replica)
        _wait_in_sync(master, replica)
        ports = [free_port() for _ in SENTINEL_IDS]
        sentinels = []
        for index, (port, myid) in enumerate(zip(ports, SENTINEL_IDS, strict=True)):
            others = [
                f"sentinel known-sentinel {service} {HOST} {other} {other_id}"
                for other, other_id in zip(ports, SENTINEL_IDS, strict=True)
                if other != port
            ]
            config, log, _ = _config(
                directory,
                f"sentinel{index + 1}",
                [
                    f"sentinel myid {myid}",
                    f"sentinel monitor {service} {HOST} {master.port} {QUORUM}",
                    f"sentinel down-after-milliseconds {service} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {service} {FAILOVER_TIMEOUT_MS}",
                    f"sentinel parallel-syncs {service} 1",
                    f"sentinel known-replica {service} {HOST} {replica.port}",
                    *others,
                ],
                port,
            )
            sentinel = _start("redis-sentinel", f"sentinel{index + 1}", config, log, port)
            nodes.append(sentinel)
            sentinels.append(sentinel)
        for sentinel in sentinels:
            wait_until(
                f"{sentinel.name} seeing the master, its replica and the other sentinels",
                lambda sentinel=sentinel: _sentinel_ready(sentinel, service, 1),
            )
        yield Deployment(directory, service, master, [replica], sentinels, started=nodes)
    finally:
        for node in nodes:
            node.kill()
        _forget_pools(service)
        shutil.rmtree(directory, ignore_errors=True)


def _forget_pools(service: str) -> None:
    """Drop django-redis's pools of this service: kept by URL for the life
    of the process, they would hold connections to processes now gone."""
    from django_redis.pool import ConnectionFactory

    for url in [url for url in ConnectionFactory._pools if f"//{service}/" in url]:
        ConnectionFactory._pools.pop(url).disconnect()
