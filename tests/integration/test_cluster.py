"""Searches on a real two-node Ray cluster on loopback: submitted with `ray job submit` and with
`tlsearch submit`, and attached to with `tlsearch run --address`.

The head and the worker node are `ray start --block` child processes on non-default ports with token
authentication (Ray >= 2.59's default); they are ended by process id, never with `ray stop`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from tests.integration.conftest import RAY, LocalCluster, WorkerNode, stop_nodes
from tlsearch.results.files import TRIALS_TABLE, checkpoint_exists, read_table_whole
from tlsearch.testing import text_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = str(Path(sys.executable).parent)


class TwoNodes:
    def __init__(self, head: LocalCluster, worker: WorkerNode, env: dict[str, str]):
        self.head, self.worker, self.env = head, worker, env

    def node_ids(self) -> set[str]:
        from ray.util.state import list_nodes

        return {n.node_id for n in list_nodes(address=self.head.dashboard_url) if n.state == "ALIVE"}

    def head_node_id(self) -> str:
        from ray.util.state import list_nodes

        return next(n.node_id for n in list_nodes(address=self.head.dashboard_url) if n.is_head_node)

    def job(self, submission_id: str):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.head.dashboard_url).get_job_info(submission_id)


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[TwoNodes]:
    # The job's `python` is the first one on the PATH of `ray start`: this venv's (docs/design.md §18).
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "WANDB_API_KEY")}
    env |= {"PATH": f"{VENV_BIN}:{env.get('PATH', '')}", "RAY_AUTH_MODE": "token", "WANDB_MODE": "offline"}
    # The head's health checks find a lost node in about 5 s rather than Ray's default 15 s or more.
    env |= {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5"}
    # The head runs trial drivers (the `trial_driver` resource) and trains one worker at a time.
    head = LocalCluster(num_cpus=1, env=env, resources={"trial_driver": 4}, all_ports=True)
    worker = None
    try:
        worker = WorkerNode(head, num_cpus=1, resources={"gpu_node_stand_in": 1}, env=env)
        cluster = TwoNodes(head, worker, env)
        import time

        deadline = time.time() + 300
        while len(cluster.node_ids()) < 2:
            if worker.process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the worker node did not join: {worker.log_text()}")
            time.sleep(1)
        yield cluster
    finally:
        stop_nodes(*(node for node in (worker, head) if node is not None))


def _spec(tiny_bert: Path, data: dict[str, Path], storage: Path, name: str, **sections: object) -> dict:
    spec = text_spec(
        tiny_bert,
        data,
        storage,
        name=name,
        search={"num_samples": 2, "max_epochs": 2, "max_concurrent": 2, "scheduler": {"type": "fifo"}},
        strategies={"full": {}, "linear_probe": {}, "common": {"batch_size": 8}},
        tracking={"wandb": {"mode": "offline"}},
    )
    for key, value in sections.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec


def _trials(run_dir: Path) -> list[dict]:
    return read_table_whole(run_dir / TRIALS_TABLE).to_pylist()


def test_token_auth_guards_the_job_server(two_nodes: TwoNodes) -> None:
    url = f"{two_nodes.head.dashboard_url}/api/jobs/"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 401
    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200


def test_ray_job_submit_spreads_trials_over_both_nodes(
    two_nodes: TwoNodes, tiny_bert: Path, text_data: dict[str, Path], tmp_path: Path
) -> None:
    # A new process per trial: with reuse, the second trial may take over the first one's process
    # (on the head) when the first ends before the worker node's process is up (trials of seconds).
    spec = _spec(tiny_bert, text_data, tmp_path / "runs", "job-submit", training={"reuse_processes": False})
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    submit = subprocess.run(
        [
            RAY,
            "job",
            "submit",
            "--address",
            two_nodes.head.dashboard_url,
            "--submission-id",
            "ray-job-submit-ok",
            "--working-dir",
            str(ROOT),
            "--",
            "python",
            "-m",
            "tlsearch",
            "run",
            str(spec_path),
        ],
        cwd=ROOT,
        env=two_nodes.env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-2000:]
    assert str(two_nodes.job("ray-job-submit-ok").status) == "SUCCEEDED"
    trials = _trials(tmp_path / "runs" / "job-submit")
    assert len(trials) == 2 and {t["status"] for t in trials} == {"completed"}
    # One CPU per node and two single-worker trials at once: one trial on each node.
    assert {t["node_id"] for t in trials} == two_nodes.node_ids()
    assert all(t["checkpoint"] and t["val_accuracy"] is not None for t in trials)
    assert (tmp_path / "runs" / "job-submit" / "report.html").exists()


def test_a_failing_search_fails_its_job(
    two_nodes: TwoNodes, tiny_bert: Path, text_data: dict[str, Path], tmp_path: Path
) -> None:
    spec = _spec(tiny_bert, text_data, tmp_path / "runs", "job-bad")
    spec["search"]["num_samples"] = 0  # invalid: the job's `tlsearch run` exits 2
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    submit = subprocess.run(
        [
            RAY,
            "job",
            "submit",
            "--address",
            two_nodes.head.dashboard_url,
            "--submission-id",
            "ray-job-bad",
            "--",
            "python",
            "-m",
            "tlsearch",
            "run",
            str(spec_path),
        ],
        env=two_nodes.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert submit.returncode != 0
    info = two_nodes.job("ray-job-bad")
    assert str(info.status) == "FAILED" and info.driver_exit_code == 2
    assert "search.num_samples" in submit.stdout + submit.stderr


def _project(tmp_path: Path, spec: dict) -> Path:
    """A project directory as `tlsearch submit` uploads it, with the spec inside. The data stay where
    every node reads them (on a real cluster: a shared mount), named by absolute paths."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "search.yaml").write_text(yaml.safe_dump(spec))
    return project


def _tlsearch(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 900
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tlsearch", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_tlsearch_submit_exits_with_the_job_outcome(
    two_nodes: TwoNodes, tiny_bert: Path, text_data: dict[str, Path], tmp_path: Path
) -> None:
    checkpoints = tmp_path / "checkpoints"
    spec = _spec(
        tiny_bert,
        text_data,
        tmp_path / "runs",
        "submitted",
        checkpoint_storage=f"file://{checkpoints}",  # a pyarrow.fs URI, as s3:// would be
    )
    project = _project(tmp_path, spec)
    env = two_nodes.env | {"RAY_ADDRESS": two_nodes.head.dashboard_url}

    ok = _tlsearch(["submit", "search.yaml"], env, project)
    assert ok.returncode == 0, ok.stdout[-4000:] + ok.stderr[-2000:]
    assert "[tlsearch] submitted job tlsearch-submitted-" in ok.stdout
    assert "Trial status" in ok.stdout  # the job's logs were streamed
    run_dir = tmp_path / "runs" / "submitted"
    trials = _trials(run_dir)
    assert len(trials) == 2 and {t["status"] for t in trials} == {"completed"}
    # Checkpoints went to checkpoint_storage, the tables and the report to the run directory.
    for trial in trials:
        assert trial["checkpoint"].startswith(str(checkpoints / "submitted")) and checkpoint_exists(
            trial["checkpoint"]
        )
    assert not list(run_dir.glob("trial_*/checkpoint_*")) and (run_dir / "report.html").exists()
    # The Tune experiment lives under checkpoint_storage too: resume finds it there.
    resumed = _tlsearch(
        ["resume", str(run_dir), "--address", two_nodes.head.address], two_nodes.env, tmp_path
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-2000:]
    assert _trials(run_dir) == trials

    # Passes the local checks but fails on the cluster (missing data): the driver's exit code.
    missing = _tlsearch(
        [
            "submit",
            "search.yaml",
            "--name",
            "submitted-missing",
            "--set",
            "data.train=/nonexistent/train.parquet",
        ],
        env,
        project,
    )
    assert missing.returncode == 2, missing.stdout[-3000:] + missing.stderr[-2000:]
    assert "FAILED (driver exit code 2)" in missing.stderr

    # Refused before anything is uploaded: results would land in the job's temporary directory.
    relative = _tlsearch(["submit", "search.yaml", "--set", "storage=runs"], env, project)
    assert relative.returncode == 2 and "temporary working directory" in relative.stderr
    assert "submitted job" not in relative.stdout


def test_tlsearch_run_address_places_a_ddp_trial_across_nodes(
    two_nodes: TwoNodes, tiny_bert: Path, text_data: dict[str, Path], tmp_path: Path
) -> None:
    spec = _spec(
        tiny_bert,
        text_data,
        tmp_path / "runs",
        "attached",
        search={"num_samples": 1, "max_epochs": 2, "scheduler": {"type": "fifo"}},
        # Two 0.9-CPU workers cannot share a 1-CPU node; the driver must sit on the head.
        resources={
            "workers_per_trial": 2,
            "cpus_per_worker": 0.9,
            "trial_driver_resources": {"trial_driver": 1},
        },
    )
    # Gradually unfrozen: the top block trains in epoch 1, the next one joins in epoch 2, and the DDP
    # wrapper, which registers what needs gradients, is rebuilt on both nodes between the two.
    spec["strategies"] = {"gradual": {"probe_epochs": 0}, "common": {"batch_size": 8}}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in two_nodes.env.items() if k != "RAY_ADDRESS"}
    run = _tlsearch(["run", str(spec_path), "--address", two_nodes.head.address], env, ROOT)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "2 nodes: " in run.stdout and "must be a filesystem every node mounts" in run.stdout
    run_dir = tmp_path / "runs" / "attached"
    (trial,) = _trials(run_dir)
    assert trial["status"] == "completed" and trial["workers"] == 2 and trial["strategy"] == "gradual"
    assert set(trial["worker_nodes"].split(",")) == two_nodes.node_ids()
    assert trial["driver_node"] == two_nodes.head_node_id()
    # The epoch-2 checkpoint holds what trained by then: the head and the top two blocks, not the
    # embeddings below them.
    last = (run_dir / trial["checkpoint"]).parent / "checkpoint_epoch_0002"  # kept beside the best
    saved = load_file(str(last / "model.safetensors"))
    assert {int(n.split(".")[3]) for n in saved if n.startswith("bert.encoder.layer.")} == {0, 1}
    assert not any("embeddings" in n for n in saved)


def test_cancelling_tlsearch_submit_stops_the_job(
    two_nodes: TwoNodes, tiny_bert: Path, text_data: dict[str, Path], tmp_path: Path
) -> None:
    """A cancelled CI run (SIGINT, then SIGTERM) must not leave its search running on the cluster."""
    import signal
    import time

    spec = _spec(
        tiny_bert, text_data, tmp_path / "runs", "cancelled", search={"num_samples": 8, "max_epochs": 2}
    )
    project = _project(tmp_path, spec)
    env = two_nodes.env | {"RAY_ADDRESS": two_nodes.head.dashboard_url}
    submit = subprocess.Popen(
        [sys.executable, "-m", "tlsearch", "submit", "search.yaml"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert submit.stdout is not None
    first = submit.stdout.readline()
    submission_id = first.split("submitted job ")[1].split(":")[0]
    deadline = time.time() + 300
    while not (tmp_path / "runs" / "cancelled" / "epochs.jsonl").exists():  # the search is training
        assert time.time() < deadline and submit.poll() is None
        time.sleep(0.5)
    submit.send_signal(signal.SIGTERM)
    _, stderr = submit.communicate(timeout=300)
    assert submit.returncode == 130, stderr[-2000:]
    assert f"stopping job {submission_id}" in stderr
    assert str(two_nodes.job(submission_id).status) == "STOPPED"


def test_a_lost_worker_node_reschedules_its_trial_from_its_checkpoint(  # last here: it ends the worker node
    two_nodes: TwoNodes, tiny_bert: Path, tmp_path: Path
) -> None:
    """The worker node killed (its `ray start` and every process under it) while one of the two
    trials trains there: the trial is rescheduled on the head and goes on from its checkpoint, and the
    search finishes."""
    import signal
    import time

    import psutil

    from tlsearch.results.files import EPOCHS_LOG, EVENTS_LOG, read_jsonl
    from tlsearch.testing import text_rows, write_parquet

    # Epochs of about a second: time to kill the node between its trial's checkpoints.
    data = {
        "train": write_parquet(text_rows(600, seed=1), tmp_path / "train.parquet"),
        "validation": write_parquet(text_rows(30, seed=2), tmp_path / "validation.parquet"),
    }
    spec = _spec(
        tiny_bert,
        data,
        tmp_path / "runs",
        "node-lost",
        search={"num_samples": 2, "max_epochs": 4, "max_failures": 1},
        training={"reuse_processes": False},
    )
    spec["strategies"] = {"full": {}, "common": {"batch_size": 4}}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    run_dir = tmp_path / "runs" / "node-lost"
    worker_node = (two_nodes.node_ids() - {two_nodes.head_node_id()}).pop()
    env = {k: v for k, v in two_nodes.env.items() if k != "RAY_ADDRESS"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "tlsearch", "run", str(spec_path), "--address", two_nodes.head.address],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def trial_on_the_worker_node() -> str | None:
        there = {r["trial_id"] for r in read_jsonl(run_dir / EPOCHS_LOG) if r.get("node_id") == worker_node}
        saved = {e["trial_id"] for e in read_jsonl(run_dir / EVENTS_LOG) if e["event"] == "checkpoint"}
        return next(iter(there & saved), None)

    try:
        deadline = time.time() + 300
        while (victim := trial_on_the_worker_node()) is None:
            assert time.time() < deadline and driver.poll() is None, "no checkpoint on the worker node"
            time.sleep(0.1)
        node = psutil.Process(two_nodes.worker.process.pid)
        for process in [node, *node.children(recursive=True)]:
            process.send_signal(signal.SIGKILL)
        _, stderr = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, stderr[-3000:]
    trials = {t["trial_id"]: t for t in _trials(run_dir)}
    assert len(trials) == 2 and all(t["status"] == "completed" and t["epochs"] == 4 for t in trials.values())
    assert trials[victim]["node_id"] == two_nodes.head_node_id()  # where it finished
    assert victim in {e["trial_id"] for e in read_jsonl(run_dir / EVENTS_LOG) if e["event"] == "retry"}
    # It went on from its checkpoint: its first epoch was reported once, on the lost node.
    reported = [r for r in read_jsonl(run_dir / EPOCHS_LOG) if r["trial_id"] == victim]
    assert [r["epoch"] for r in reported].count(1) == 1 and reported[0]["node_id"] == worker_node
