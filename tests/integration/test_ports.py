"""What a local cluster started by `tlsearch run` (no --address) listens on, measured: the cluster is
started by tlsearch's own `connect`, in a child process, and every listening TCP socket of that
process and its descendants (the GCS, the raylet, the dashboard and its agents, the workers) is read
with psutil. docs/reliability.md#security lists the same; a Ray upgrade that binds anything else to
all interfaces, or the dashboard elsewhere than loopback, fails here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROBE = r"""
import json, time, urllib.error, urllib.request
import psutil, ray
from ray._private.authentication.authentication_utils import is_token_auth_enabled
from tlsearch.search.runner import connect

connect(None)
time.sleep(3)  # the agents open their ports after ray.init returns


def role(process):
    if process.pid == me.pid:
        return "driver"
    name, command = process.name(), " ".join(process.cmdline())
    if name in ("gcs_server", "raylet"):
        return name
    if "dashboard/dashboard.py" in command:
        return "dashboard"
    if name in ("ray::DashboardAgent", "ray::RuntimeEnvAgent"):
        return name.removeprefix("ray::")
    return "worker" if name.startswith("ray::") else f"other: {command[:80]}"


me = psutil.Process()
sockets = []
for process in [me, *me.children(recursive=True)]:
    try:
        sockets += [
            {"role": role(process), "ip": c.laddr.ip, "port": c.laddr.port}
            for c in process.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN
        ]
    except psutil.Error:
        pass  # a worker that ended meanwhile
dashboard = ray._private.worker.global_worker.node.webui_url
try:
    urllib.request.urlopen(f"http://{dashboard}/api/version", timeout=10)
    without_token = 200
except urllib.error.HTTPError as error:
    without_token = error.code
node_ip = ray._private.worker.global_worker.node.node_ip_address
print(json.dumps({"sockets": sockets, "without_token": without_token, "token_auth": is_token_auth_enabled(),
                  "node_ip": node_ip}))
ray.shutdown()
"""
ALL_INTERFACES = ("0.0.0.0", "::")
# Ray 2.60's own servers that no ray.init argument or _system_config key moves to loopback.
DOCUMENTED_ON_ALL_INTERFACES = {"gcs_server", "raylet", "DashboardAgent", "worker", "driver"}


def test_a_local_clusters_dashboard_is_on_loopback_with_token_auth_and_the_rest_is_as_documented() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=env | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    by_role: dict[str, set[str]] = {}
    for socket in measured["sockets"]:
        by_role.setdefault(socket["role"], set()).add(socket["ip"])
    assert by_role["dashboard"] == {"127.0.0.1"}  # dashboard_host="127.0.0.1"
    # Token authentication is on by default for a cluster ray.init starts: the dashboard refuses a
    # request without the token.
    assert measured["token_auth"] and measured["without_token"] == 401
    assert not [role for role in by_role if role.startswith("other")], by_role
    on_all = {role for role, ips in by_role.items() if ips & set(ALL_INTERFACES)}
    assert on_all <= DOCUMENTED_ON_ALL_INTERFACES, by_role
    assert {"gcs_server", "raylet", "driver"} <= on_all, by_role  # idle workers may not have started yet
    # The runtime-env agent listens on the node's address: ray.init replaces _node_ip_address=127.0.0.1
    # by the machine's own address (services.resolve_ip_for_localhost), so it is not loopback either.
    assert by_role["RuntimeEnvAgent"] == {measured["node_ip"]}
