"""A real Ray cluster on loopback for the integration tests, started as a child process (the
`ray_cluster` and `ray_connected` fixtures in tests/conftest.py start one a session).

Never `ray stop` (it would end every Ray process on the machine): the head runs under
`ray start --block` and is ended by its process id.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
# Ray >= 2.59 enables token authentication for clusters started with `ray start`; drivers and the
# CLI send the token (from ~/.ray/auth_token) only when told to (docs/design.md §18).
os.environ.setdefault("RAY_AUTH_MODE", "token")


def ensure_auth_token() -> None:
    """`ray start` with token auth refuses to run without a token; on a fresh machine there is none
    until something generates it, as a user does once with `ray get-auth-token --generate`."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    if not (Path.home() / ".ray" / "auth_token").exists():
        subprocess.run([RAY, "get-auth-token", "--generate"], check=True, capture_output=True)


ensure_auth_token()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_ports() -> list[str]:
    """Every per-node port on a free, non-default number: two nodes on one machine never collide."""
    flags = (
        "--node-manager-port",
        "--object-manager-port",
        "--metrics-export-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
    )
    return [arg for flag in flags for arg in (flag, str(free_port()))]


def node_environment(env: dict[str, str] | None, dashboard_url: str) -> dict[str, str]:
    """The environment of a node's processes.

    `RAY_API_SERVER_ADDRESS` points Ray's state API at this cluster's dashboard. Without it a
    process that asks the state API with no address (Ray Train's placement-group cleaner, to see
    whether its controller lives) finds the cluster through /tmp/ray/ray_current_cluster, which the
    latest head on the machine overwrites; once that head is gone the cleaner fails, an ASHA-stopped
    trial's placement group stays reserved and the next Ray Train trial waits for its CPUs forever.

    `RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0`: on SIGTERM a node otherwise drains for up to 30 s
    (for Ray Serve's proxies) before it stops; a test cluster has nothing to drain."""
    return {
        **(os.environ if env is None else env),
        "RAY_API_SERVER_ADDRESS": dashboard_url,
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    }


class RayNode:
    """One `ray start --block` process (a head or a worker node) on loopback."""

    def __init__(self, args: list[str], env: dict[str, str] | None, role: str):
        self.env = env
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"ray-{role}-", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(
            [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--disable-usage-stats", *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            env=env,
        )

    def log_text(self) -> str:
        return Path(self.log.name).read_text()[-3000:]

    def stop(self) -> None:
        stop_nodes(self)


def stop_nodes(*nodes: RayNode) -> None:
    """SIGTERM to `ray start --block` shuts down the processes it started, and only those. Every node
    is signalled before any is waited for: each takes seconds to shut down, and they do it at once."""
    running = [node for node in nodes if node.process.poll() is None]
    for node in running:
        node.process.send_signal(signal.SIGTERM)
    for node in running:
        try:
            node.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(node.process.pid, signal.SIGKILL)
    for node in nodes:
        if getattr(node, "temp_dir", None):
            shutil.rmtree(node.temp_dir, ignore_errors=True)


class LocalCluster(RayNode):
    def __init__(
        self,
        num_cpus: int,
        *,
        env: dict[str, str] | None = None,
        resources: dict[str, float] | None = None,
        all_ports: bool = False,
    ):
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        args = [
            "--head",
            "--port",
            str(self.port),
            "--include-dashboard",
            "true",
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(self.dashboard_port),
            "--num-cpus",
            str(num_cpus),
            "--num-gpus",
            "0",
        ]
        if resources:
            args += ["--resources", json.dumps(resources)]
        if all_ports:
            args += ["--ray-client-server-port", str(free_port()), *node_ports()]
        super().__init__(args, node_environment(env, self.dashboard_url), "head")
        try:
            self._wait_ready()
        except BaseException:
            self.stop()  # never leave a head running behind a failed start
            raise

    def _wait_ready(self, timeout: float = 120) -> None:
        import urllib.error
        import urllib.request

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited: {self.log_text()}")
            try:
                urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=2)
                return
            except urllib.error.HTTPError:
                return  # the dashboard answers (401 without a token): the head is up
            except OSError:
                time.sleep(1)
        raise TimeoutError("the Ray head did not come up")


class WorkerNode(RayNode):
    def __init__(self, head: LocalCluster, num_cpus: int, resources: dict[str, float], env: dict[str, str]):
        # Its own temp dir, as a real second machine has: nodes sharing /tmp/ray also share the
        # unpacked job working directories, and one node's cleanup deletes the other's.
        self.temp_dir = tempfile.mkdtemp(prefix="rw", dir="/tmp")  # short: Unix socket paths are capped
        args = [
            "--temp-dir",
            self.temp_dir,
            "--address",
            head.address,
            "--num-cpus",
            str(num_cpus),
            "--num-gpus",
            "0",
            "--resources",
            json.dumps(resources),
            *node_ports(),
        ]
        super().__init__(args, node_environment(env, head.dashboard_url), "worker")
