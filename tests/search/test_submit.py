"""`tlsearch submit` before and after the job: what is checked locally, what is uploaded, and how
a job's outcome becomes an exit code. (Submitting to a real cluster: tests/integration/test_cluster.py.)"""

from __future__ import annotations

import shlex
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tlsearch.errors import UserInputError
from tlsearch.search.runner import check_job_storage
from tlsearch.search.submit import (
    SECRET_PATTERNS,
    UPLOAD_EXCLUDES,
    exit_code,
    prepare_submission,
    secret_files,
)
from tlsearch.spec import validate_spec

SPEC = {
    "name": "ci-search",
    "storage": "/mnt/shared/runs",
    "model": {"source": "hf", "name": "builtin:all-minilm-l6-v2", "task": "text-classification"},
    "data": {"builtin": "bbc-news"},
}


def write(tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / "project" / "search_spaces" / "s.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({**SPEC, **changes}))
    return path


def test_the_entrypoint_runs_the_spec_relative_to_the_uploaded_directory(tmp_path: Path) -> None:
    path = write(tmp_path)
    submission = prepare_submission(str(path), ["search.num_samples=3"], str(tmp_path / "project"))
    assert shlex.split(submission.entrypoint) == [
        *("python", "-m", "tlsearch", "run", "search_spaces/s.yaml"),
        *("--set", "search.num_samples=3"),
    ]
    assert submission.runtime_env == {"working_dir": str(tmp_path / "project"), "excludes": UPLOAD_EXCLUDES}
    assert {".git", ".venv", "runs", "wandb"} <= set(UPLOAD_EXCLUDES)
    assert submission.submission_id.startswith("tlsearch-ci-search-")
    assert "env_vars" not in submission.runtime_env  # secrets never travel through the runtime env


SECRETS = [
    ".env",
    ".env.production",
    ".netrc",
    ".git-credentials",
    ".pypirc",
    ".npmrc",
    "server.pem",
    "tls.key",
    "client.p12",
    "id_rsa",
    "id_ed25519.pub",
    "wandb/settings",
    ".config/wandb/settings",
    "huggingface/token",
    ".ssh/config",
    ".aws/credentials",
]
KEPT = [
    "train.py",
    "search_spaces/other.yaml",
    ".env.example",
    "data/notes.txt",
    "keys.py",
    "environment.yml",
]


def secret_tree(project: Path) -> None:
    """A working directory with secrets at its top and in a subdirectory, beside files that must go."""
    for name in [*SECRETS, *(f"sub/deeper/{s}" for s in SECRETS), *KEPT, *(f"sub/{k}" for k in KEPT)]:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("fake-secret-0123456789" if name not in KEPT else "kept")


def test_secrets_are_left_out_of_the_package_ray_builds(tmp_path: Path) -> None:
    """Ray's own packaging code, with the runtime env prepare_submission hands it: the zip it would
    upload holds the project's files and none of its secrets, at the top or deeper."""
    from ray._private.runtime_env.packaging import create_package

    write(tmp_path)
    project = tmp_path / "project"
    secret_tree(project)
    runtime_env = prepare_submission(str(project / "search_spaces" / "s.yaml"), [], str(project)).runtime_env
    package = tmp_path / "package.zip"
    create_package(
        runtime_env["working_dir"], package, include_gitignore=True, excludes=runtime_env["excludes"]
    )
    names = {n.rstrip("/") for n in zipfile.ZipFile(package).namelist()}
    assert {*KEPT, *(f"sub/{k}" for k in KEPT)} <= names
    leaked = [n for n in names if any(n == s or n.endswith(f"/{s}") for s in SECRETS)]
    leaked += [n for n in names if n.split("/")[-1] in (".ssh", ".aws")]
    assert leaked == []


def test_each_secret_found_draws_one_warning_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write(tmp_path)
    project = tmp_path / "project"
    secret_tree(project)
    (project / "runs" / "old").mkdir(parents=True)
    (project / "runs" / "old" / ".env").write_text("not scanned: runs/ is never uploaded")
    (project / "home").symlink_to(project / "sub", target_is_directory=True)  # not followed
    prepare_submission(str(project / "search_spaces" / "s.yaml"), [], str(project))
    warnings = capsys.readouterr().err.splitlines()
    named = [line.split()[2] for line in warnings]
    # One line each: files by name, credential folders once; wandb/ (never uploaded) is not entered.
    folders = (".ssh/", ".aws/", ".config/wandb/")
    expected = [s for s in SECRETS if not s.startswith((*folders, "wandb/"))] + list(folders)
    expected += [f"sub/deeper/{s}" for s in expected]
    assert sorted(named) == sorted(expected)
    assert all("looks like a secret: not uploaded" in line for line in warnings)
    assert secret_files(project / "search_spaces") == []


def test_the_secret_patterns_are_excluded_whatever_else_is() -> None:
    assert set(SECRET_PATTERNS) <= set(UPLOAD_EXCLUDES)
    assert {".env", ".netrc", "*.pem", ".git-credentials", "**/wandb/settings"} <= set(SECRET_PATTERNS)


@pytest.mark.parametrize(
    ("changes", "overrides", "message"),
    [
        ({"storage": "./runs"}, [], "relative path lands in the job's temporary working directory"),
        ({"checkpoint_storage": "ckpts"}, [], "`checkpoint_storage` is 'ckpts'"),
        ({}, ["search.num_samples=0"], "search.num_samples"),  # an invalid spec never leaves this machine
    ],
)
def test_bad_submissions_are_refused_before_upload(
    tmp_path: Path, changes: dict, overrides: list[str], message: str
) -> None:
    with pytest.raises(UserInputError, match=message.replace("(", r"\(").replace(".", r"\.")):
        prepare_submission(str(write(tmp_path, **changes)), overrides, str(tmp_path / "project"))


def test_the_spec_must_be_inside_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(UserInputError, match="lies outside the working directory"):
        prepare_submission(str(write(tmp_path)), [], str(tmp_path / "elsewhere"))


@pytest.mark.parametrize(
    ("status", "driver_exit_code", "expected"),
    [
        ("SUCCEEDED", 0, 0),
        ("FAILED", 2, 2),  # bad input on the cluster (a missing data file)
        ("FAILED", 1, 1),  # no trial finished
        ("FAILED", None, 1),  # failed before the driver ran (runtime env set-up)
        ("STOPPED", None, 1),  # `ray job submit` would exit 0 here
    ],
)
def test_exit_code_follows_the_job(status: str, driver_exit_code: int | None, expected: int) -> None:
    assert exit_code(SimpleNamespace(status=status, driver_exit_code=driver_exit_code)) == expected


def test_a_search_started_inside_a_ray_job_refuses_relative_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = validate_spec({**SPEC, "storage": "runs"})
    check_job_storage(spec)  # outside a job: fine
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    with pytest.raises(UserInputError, match="--set storage=/mnt/shared/tlsearch-runs"):
        check_job_storage(spec)
    check_job_storage(validate_spec(SPEC))


def test_submitting_needs_only_ray_pydantic_and_yaml_on_the_ci_machine() -> None:
    # cluster/github-actions-submit.yml installs tlsearch with --no-deps: checking a spec and
    # preparing a job must not import the training stack.
    import subprocess
    import sys

    code = (
        "import sys, tlsearch.cli, tlsearch.search.submit as s;"
        "s.prepare_submission('search_spaces/bbc_news_minilm.yaml', ['storage=/mnt/x'], '.');"
        "heavy = ('torch', 'timm', 'transformers', 'peft', 'optuna', 'wandb', 'pyarrow', 'ray.tune');"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
