"""The deployment files in cluster/ and the upload's ignore rules, checked without starting anything: the
cluster-launcher config against Ray's own schema and config preparation, the Kubernetes manifests and the
GitHub workflow for what keeps a cluster private and a search's outcome visible, and `.rayignore` through
Ray's own packaging code."""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
AWS = CLUSTER / "aws-gpu.yaml"
RAYJOB = CLUSTER / "kuberay-rayjob.yaml"
RAYCLUSTER = CLUSTER / "kuberay-raycluster.yaml"
PVC = CLUSTER / "kuberay-pvc.yaml"
WORKFLOW = CLUSTER / "github-actions-submit.yml"
CLUSTER_FILES = sorted([*CLUSTER.glob("*.yaml"), *CLUSTER.glob("*.yml")])

# Environment variable names that hold credentials: WANDB_API_KEY, RAY_AUTH_TOKEN, AWS_SECRET_ACCESS_KEY, ...
SECRET_NAME = re.compile(r"(^|_)(KEY|TOKEN|SECRET|PASSWORD)(_|$)", re.IGNORECASE)
# A W&B API key is 40 hex characters; nothing like it may sit in a deployment file.
WANDB_KEY_LIKE = re.compile(r"\b[0-9a-f]{40}\b")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def ray_schema() -> dict[str, Any]:
    return json.loads(importlib.resources.files("ray.autoscaler").joinpath("ray-schema.json").read_text())


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping inside a parsed YAML document."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


# --------------------------------------------------------------------------------------------- all files


def test_the_cluster_folder_has_every_deployment_file() -> None:
    assert {p.name for p in CLUSTER_FILES} >= {
        "aws-gpu.yaml",
        "kuberay-rayjob.yaml",
        "kuberay-raycluster.yaml",
        "kuberay-pvc.yaml",
        "github-actions-submit.yml",
    }


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_each_file_opens_with_a_comment_naming_itself_and_parses(path: Path) -> None:
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# "), f"{path.name} must open with a comment saying what it is for"
    header_end = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    header = "\n".join(lines[:header_end])
    # The header shows the exact command that uses the file, which names it.
    assert path.name in header, f"{path.name}: the opening comment must show the command that uses it"
    assert all(doc is not None for doc in yaml.safe_load_all(path.read_text()))


@pytest.mark.parametrize("path", [*CLUSTER_FILES, REPO / ".rayignore"], ids=lambda p: p.name)
def test_no_file_holds_a_credential(path: Path) -> None:
    text = path.read_text()
    assert not WANDB_KEY_LIKE.search(text)
    assert "WANDB_API_KEY=" not in text
    for mapping in walk(list(yaml.safe_load_all(text)) if path.suffix in (".yaml", ".yml") else []):
        if isinstance(mapping.get("name"), str) and SECRET_NAME.search(mapping["name"]):
            assert "value" not in mapping, f"{path.name}: {mapping['name']} has a literal value"


# ------------------------------------------------------------------------------------ cluster launcher


def test_aws_config_validates_against_rays_schema() -> None:
    errors = sorted(jsonschema.Draft7Validator(ray_schema()).iter_errors(load(AWS)), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_schema_check_rejects_what_ray_rejects() -> None:
    """The validation above has teeth: a fractional custom resource or an unknown key fails it."""
    validator = jsonschema.Draft7Validator(ray_schema())
    fractional = load(AWS)
    fractional["available_node_types"]["head"]["resources"]["trial_driver"] = 0.5
    misspelt = {**load(AWS), "idle_timout_minutes": 5}
    assert list(validator.iter_errors(fractional))
    assert list(validator.iter_errors(misspelt))


def test_aws_config_passes_rays_own_preparation() -> None:
    """What `ray up` does before touching AWS: merge the provider defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(load(AWS)))
    validate_config(prepared)
    # Every key we rely on was given, so none of the defaults' commands (a nightly Ray wheel) leak in.
    assert all("ray-wheels" not in c for c in prepared["head_setup_commands"] + prepared["setup_commands"])


def test_head_runs_drivers_but_no_training() -> None:
    config = load(AWS)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("trial_driver", 0) >= 100
    # A multi-worker trial's driver asks for 0.01 CPU besides trial_driver: CPU 0 would never fit it.
    assert head["resources"].get("CPU", 0) >= 1
    assert head["resources"].get("GPU", 0) == 0
    assert "InstanceMarketOptions" not in head["node_config"], "the head (the search's driver) is on-demand"


def test_gpu_node_types_autoscale_within_bounds() -> None:
    config = load(AWS)
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    gpus = sorted(v["resources"].get("GPU", 0) for v in workers.values())
    assert gpus and gpus[0] >= 1, "every worker type trains on GPUs"
    assert gpus[-1] > 1, "a multi-GPU type for multi-worker trials"
    for name, node_type in workers.items():
        assert 0 <= node_type["min_workers"] < node_type["max_workers"] <= config["max_workers"], name
        assert node_type["resources"]["CPU"] >= 1, name
    assert sum(t["min_workers"] for t in workers.values()) <= config["max_workers"]
    assert config["idle_timeout_minutes"] > 0


def start_commands(config: dict[str, Any]) -> list[str]:
    return config["head_start_ray_commands"] + config["worker_start_ray_commands"]


def test_dashboard_is_private_and_token_auth_is_on() -> None:
    config = load(AWS)
    head_start = " ".join(c for c in config["head_start_ray_commands"] if "ray start" in c)
    hosts = re.findall(r"--dashboard-host[= ](\S+)", head_start)
    assert hosts, "bind the dashboard explicitly"
    assert all(h not in ("0.0.0.0", "::") for h in hosts), hosts
    assert "--include-dashboard=false" not in head_start, "Ray Train's cleanup needs the dashboard"
    for command in start_commands(config):
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token" in command, command
    # Every node reads the same token from Ray's default path.
    assert "~/.ray/auth_token" in config["file_mounts"]


def test_nodes_install_tlsearch_with_the_pinned_torch_pair_from_the_synced_repo() -> None:
    config = load(AWS)
    for remote, local in config["file_mounts"].items():
        if remote.startswith("~/tlsearch/"):
            assert (REPO / local).exists(), f"file_mounts {remote}: {local} is not in the repository"
    install = next(c for c in config["setup_commands"] if "pip install" in c)
    assert "constraints/cpu.txt" in install and "tlsearch[demo]" in install
    pins = (REPO / "constraints" / "cpu.txt").read_text().split()
    assert {"torch==2.14.1", "torchvision==0.29.1"} <= set(pins)
    # The job's `python` is the one on the PATH of `ray start`: the venv's.
    for command in start_commands(config):
        if "ray start" in command:
            assert "tlsearch-venv/bin" in command


def test_run_directory_storage_is_mounted_on_every_node_where_ci_writes_it() -> None:
    config = load(AWS)
    common_setup = " ".join(config["setup_commands"])  # run on the head and on every worker
    assert "mount -t nfs4" in common_setup and "/mnt/efs" in common_setup
    submit = submit_step(load(WORKFLOW))["run"]
    storage = re.search(r"--set storage=(\S+)", submit)
    assert storage and storage.group(1).startswith("/mnt/efs/"), "absolute, on the shared mount"
    assert f"mkdir -p {storage.group(1)}" in common_setup


# ------------------------------------------------------------------------------------------ Kubernetes


def cluster_specs() -> dict[str, dict[str, Any]]:
    return {"RayJob": load(RAYJOB)["spec"]["rayClusterSpec"], "RayCluster": load(RAYCLUSTER)["spec"]}


def containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    return pod_template["spec"]["containers"]


def mounted_claims(pod_template: dict[str, Any]) -> dict[str, str]:
    """mountPath -> PVC claim name, for the volumes every container mounts."""
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod_template["spec"].get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    return {
        m["mountPath"]: claims[m["name"]]
        for c in containers(pod_template)
        for m in c.get("volumeMounts", [])
        if m["name"] in claims
    }


def test_manifests_have_the_expected_kinds() -> None:
    assert (load(RAYJOB)["apiVersion"], load(RAYJOB)["kind"]) == ("ray.io/v1", "RayJob")
    assert (load(RAYCLUSTER)["apiVersion"], load(RAYCLUSTER)["kind"]) == ("ray.io/v1", "RayCluster")
    pvc = load(PVC)
    assert (pvc["apiVersion"], pvc["kind"]) == ("v1", "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "trials on every pod write the run directory"


def test_rayjob_runs_tlsearch_on_the_shared_volume_and_cleans_up() -> None:
    job = load(RAYJOB)["spec"]
    entrypoint = job["entrypoint"]
    assert entrypoint.startswith("python -m tlsearch run ")
    spec_path = re.search(r"/home/ray/tlsearch/(\S+\.yaml)", entrypoint)
    assert spec_path and (REPO / spec_path.group(1)).is_file(), "the spec ships in the image"
    storage = re.search(r"--set storage=(\S+)", entrypoint)
    assert storage and storage.group(1).startswith("/"), "a submitted job needs an absolute storage"
    cluster = job["rayClusterSpec"]
    claim = load(PVC)["metadata"]["name"]
    for template in [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]:
        assert mounted_claims(template).get(storage.group(1)) == claim
    assert job["shutdownAfterJobFinishes"] is True
    assert job["ttlSecondsAfterFinished"] >= 0
    assert job["activeDeadlineSeconds"] > 0
    assert job["backoffLimit"] >= 0


@pytest.mark.parametrize("kind", ["RayJob", "RayCluster"])
def test_ray_cluster_is_private_authenticated_and_pinned(kind: str) -> None:
    import ray

    spec = cluster_specs()[kind]
    assert spec["rayVersion"].split(".")[:2] == ray.__version__.split(".")[:2]
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") not in ("LoadBalancer", "NodePort")
    assert head.get("enableIngress", False) is False
    head_resources = json.loads(json.loads(head["rayStartParams"]["resources"]))  # KubeRay's quoted form
    assert head_resources["trial_driver"] >= 100
    assert float(head["rayStartParams"]["num-cpus"]) >= 1
    assert all("nvidia.com/gpu" not in c["resources"].get("limits", {}) for c in containers(head["template"]))


@pytest.mark.parametrize("kind", ["RayJob", "RayCluster"])
def test_worker_groups_hold_gpus_within_autoscaling_bounds(kind: str) -> None:
    spec = cluster_specs()[kind]
    assert spec["enableInTreeAutoscaling"] is True
    for group in spec["workerGroupSpecs"]:
        name = group["groupName"]
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], name
        for container in containers(group["template"]):
            assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1, name


@pytest.mark.parametrize("kind", ["RayJob", "RayCluster"])
def test_wandb_key_reaches_only_the_head_and_only_from_a_secret(kind: str) -> None:
    spec = cluster_specs()[kind]
    head_env = [e for c in containers(spec["headGroupSpec"]["template"]) for e in c.get("env", [])]
    key = [e for e in head_env if e["name"] == "WANDB_API_KEY"]
    assert len(key) == 1 and "value" not in key[0]
    assert set(key[0]["valueFrom"]["secretKeyRef"]) >= {"name", "key"}
    for group in spec["workerGroupSpecs"]:
        for container in containers(group["template"]):
            assert all(e["name"] != "WANDB_API_KEY" for e in container.get("env", [])), group["groupName"]


def test_rayjob_runtime_env_carries_no_secret() -> None:
    """runtime_env env_vars are readable through the dashboard and the State API (docs/design.md §21)."""
    runtime_env = yaml.safe_load(load(RAYJOB)["spec"].get("runtimeEnvYAML") or "{}") or {}
    for name in runtime_env.get("env_vars", {}):
        assert not SECRET_NAME.search(name) and not name.startswith("WANDB"), name


# ---------------------------------------------------------------------------------------------- CI


def submit_step(workflow: dict[str, Any]) -> dict[str, Any]:
    steps = [s for job in workflow["jobs"].values() for s in job["steps"]]
    return next(s for s in steps if "tlsearch submit" in s.get("run", ""))


def test_workflow_submits_with_tlsearch_and_fails_with_the_search() -> None:
    workflow = load(WORKFLOW)
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as true
    assert "workflow_dispatch" in triggers
    assert "group" in workflow["concurrency"]
    for name, job in workflow["jobs"].items():
        assert 0 < job["timeout-minutes"] <= 360, name  # GitHub-hosted jobs stop at 360 anyway
    step = submit_step(workflow)
    # exec: GitHub signals only the step's entry process on cancel; tlsearch must be that process.
    assert re.search(r"^\s*exec tlsearch submit ", step["run"], re.MULTILINE)
    assert "--address http://127.0.0.1:8265" in step["run"]
    assert step["env"]["RAY_AUTH_MODE"] == "token"
    assert step["env"]["RAY_AUTH_TOKEN"].replace(" ", "") == "${{secrets.RAY_AUTH_TOKEN}}"
    default_spec = workflow["jobs"]["search"]["env"]["SPEC"]
    assert (REPO / re.search(r"'(search_spaces/\S+\.yaml)'", default_spec).group(1)).is_file()


def test_workflow_sends_no_wandb_key_and_documents_plain_ray() -> None:
    text = WORKFLOW.read_text()
    assert "WANDB" not in text
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    assert "ray job submit" in comments and "--working-dir" in comments
    assert "ray job status" in comments, "say why the plain commands cannot fail a CI job"


# ----------------------------------------------------------------------------------- what Ray uploads

FAKE_CHECKOUT = {
    "tlsearch/__init__.py": "",
    "search_spaces/demo.yaml": "name: demo\n",
    "pyproject.toml": "",
    "benchmarks/results/demo.json": "{}",
    ".venv/lib/python3.11/site-packages/torch/big.so": "x" * 1000,
    "venv/bin/python": "",
    "runs/demo/trial_0/checkpoint/model.safetensors": "x",
    "wandb/offline-run-1/run.wandb": "x",
    ".git/objects/ab/cdef": "x",
    "tlsearch/__pycache__/cli.cpython-311.pyc": "x",
    "best.ckpt": "x",
    ".pytest_cache/v/cache": "x",
}
KEPT = {"tlsearch/__init__.py", "search_spaces/demo.yaml", "pyproject.toml", "benchmarks/results/demo.json"}


def fake_checkout(root: Path, *, gitignore: bool) -> Path:
    for name, content in FAKE_CHECKOUT.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    (root / ".rayignore").write_text((REPO / ".rayignore").read_text())
    if gitignore:
        (root / ".gitignore").write_text((REPO / ".gitignore").read_text())
    return root


def packaged(directory: Path, zip_path: Path, *, include_gitignore: bool, excludes: list[str]) -> set[str]:
    """The files Ray's own packaging puts in the zip it uploads for a working dir."""
    from ray._private.runtime_env.packaging import create_package

    create_package(str(directory), zip_path, include_gitignore=include_gitignore, excludes=excludes)
    with zipfile.ZipFile(zip_path) as archive:
        return {name for name in archive.namelist() if not name.endswith("/")}


def assert_only_the_code_is_uploaded(files: set[str]) -> None:
    uploaded = files - {".gitignore", ".rayignore"}
    assert uploaded == KEPT, (
        f"uploaded beyond the code: {sorted(uploaded - KEPT)}, missing: {sorted(KEPT - uploaded)}"
    )


def test_rayignore_alone_keeps_local_folders_out(tmp_path: Path) -> None:
    """With .gitignore off (RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1) and Ray's default excludes off."""
    checkout = fake_checkout(tmp_path / "checkout", gitignore=False)
    files = packaged(checkout, tmp_path / "pkg.zip", include_gitignore=False, excludes=[])
    assert_only_the_code_is_uploaded(files)


def test_rayignore_prunes_directories_instead_of_walking_them() -> None:
    from ray._private.thirdparty.pathspec import PathSpec

    spec = PathSpec.from_lines("gitwildmatch", (REPO / ".rayignore").read_text().splitlines())
    for directory in (".git", ".venv", "venv", "runs", "wandb", "__pycache__"):
        assert spec.match_file(directory), f"{directory} itself must match, or Ray walks all of it"
    for kept in ("tlsearch/cli.py", "search_spaces/bbc_news_minilm.yaml", "tlsearch/tracking/wandb_runs.py"):
        assert not spec.match_file(kept), kept


def test_upload_as_the_job_client_builds_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same path as `ray job submit --working-dir` / JobSubmissionClient: Ray's default excludes,
    the runtime env's excludes, .gitignore and .rayignore."""
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    monkeypatch.delenv("RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES", raising=False)
    checkout = fake_checkout(tmp_path / "checkout", gitignore=True)
    seen: dict[str, Any] = {}

    def capture(working_dir: str, excludes: list[str], is_file: bool = False) -> None:
        seen.update(working_dir=working_dir, excludes=excludes)

    upload_working_dir_if_needed({"working_dir": str(checkout)}, include_gitignore=True, upload_fn=capture)
    files = packaged(
        Path(seen["working_dir"]), tmp_path / "pkg.zip", include_gitignore=True, excludes=seen["excludes"]
    )
    assert_only_the_code_is_uploaded(files)


def test_repository_upload_holds_the_code_and_stays_small(tmp_path: Path) -> None:
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import PACKAGE_SIZE_WARNING

    excludes = ray_constants.get_runtime_env_default_excludes()
    files = packaged(REPO, tmp_path / "repo.zip", include_gitignore=True, excludes=excludes)
    code = {"tlsearch/cli.py", "pyproject.toml", "constraints/cpu.txt", "search_spaces/bbc_news_minilm.yaml"}
    assert code <= files
    assert not [f for f in files if f.startswith((".venv/", "runs/", ".git/", "wandb/"))]
    assert (tmp_path / "repo.zip").stat().st_size < PACKAGE_SIZE_WARNING
