"""`tlsearch submit`: run a search as a Ray job on a remote cluster and exit with its real outcome.

`ray job submit` exits 0 for a STOPPED job and `ray job status` always exits 0 (docs/design.md §18), so a
CI step built on them cannot fail when the search fails. This wraps Ray's JobSubmissionClient: the
spec is checked here before anything is uploaded, the job's logs are streamed, and the exit code is
the job driver's own (0 success, 1 no trial finished, 2 bad input), 1 for a stopped job, and 130
when this process is interrupted (the job is stopped first, so a cancelled CI run frees the cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from tlsearch.errors import UserInputError
from tlsearch.spec import Spec, load_spec

# Never uploaded, whatever the working directory's .gitignore / .rayignore say (Ray honours both, and
# any one matcher excluding a path wins, so a `!` there cannot bring these back). Gitignore patterns, as
# Ray's runtime_env `excludes` reads them: no `/` inside, at any depth; a directory matched is skipped whole.
BULKY_EXCLUDES = [".git", ".venv", "venv", "runs", "wandb", "**/__pycache__", "*.egg-info"]
SECRET_PATTERNS = [
    # dotenv files; their committed templates hold no secrets and stay
    *(".env", ".env.*", "!.env.example", "!.env.sample", "!.env.template"),
    # tools' login files: netrc (curl, requests, W&B's key after `wandb login`), git, PyPI, npm
    *(".netrc", "_netrc", ".git-credentials", ".pypirc", ".npmrc"),
    # private keys and key stores
    *("*.pem", "*.key", "*.p12", "*.pfx", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*"),
    # credential folders and token files (a working directory that is, or holds, a home directory)
    *(".ssh", ".aws", ".gnupg", ".kube", ".docker", ".config/gcloud", "**/huggingface/token"),
    "**/.ray/auth_token",
    # W&B's settings: also under `wandb` above, which is there for bulk and might be dropped one day
    *("**/wandb/settings", "**/.config/wandb"),
]
UPLOAD_EXCLUDES = [*BULKY_EXCLUDES, *SECRET_PATTERNS]
# The secret scan stops after this many entries: it is a warning, the exclusion holds regardless.
SECRET_SCAN_LIMIT = 50_000
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass(frozen=True)
class Submission:
    spec: Spec
    entrypoint: str
    runtime_env: dict[str, Any]
    submission_id: str


def prepare_submission(
    spec_path: str, overrides: Sequence[str], working_dir: str, python: str = "python"
) -> Submission:
    """Check everything that can be checked on this machine before a byte is uploaded."""
    spec = load_spec(spec_path, list(overrides))
    working = Path(working_dir).expanduser().resolve()
    if not working.is_dir():
        raise UserInputError(f"--working-dir {working_dir}: no such directory")
    spec_file = Path(spec_path).expanduser().resolve()
    if not spec_file.is_relative_to(working):
        raise UserInputError(
            f"{spec_path} lies outside the working directory {working}, which is all the job receives: "
            "move the spec under it or pass --working-dir"
        )
    for key, value in (("storage", spec.storage), ("checkpoint_storage", spec.checkpoint_storage)):
        if value is not None and "://" not in value and not Path(value).expanduser().is_absolute():
            raise UserInputError(
                f"`{key}` is {value!r}: in a Ray job a relative path lands in the job's temporary "
                f"working directory, which Ray deletes. Give an absolute path on a filesystem the head "
                f"node keeps, e.g. --set {key}=/mnt/shared/tlsearch-runs"
            )
    for name in secret_files(working):
        print(
            f"[tlsearch] warning: {name} in the working directory looks like a secret: not uploaded "
            "(tlsearch.search.submit.SECRET_PATTERNS); keep secrets out of the working directory",
            file=sys.stderr,
            flush=True,
        )
    command = [python, "-m", "tlsearch", "run", spec_file.relative_to(working).as_posix()]
    for override in overrides:
        command += ["--set", override]
    return Submission(
        spec=spec,
        entrypoint=shlex.join(command),
        # No env_vars: anything put here is readable in the dashboard and the State API. The W&B key
        # comes from the head node's environment or `wandb login` (cluster/README.md).
        runtime_env={"working_dir": str(working), "excludes": UPLOAD_EXCLUDES},
        submission_id=f"tlsearch-{spec.name}-{uuid.uuid4().hex[:8]}",
    )


def secret_files(working: Path, limit: int = SECRET_SCAN_LIMIT) -> list[str]:
    """The secret-looking files under `working` (a credential folder counts once, with a trailing
    `/`), relative to it, in walk order. Matched by Ray's own gitignore matcher, so exactly what the
    upload leaves out for SECRET_PATTERNS; the bulky folders are not entered, nor symlinked ones, and
    the walk stops after `limit` entries (a warning only: the exclusion holds for every file)."""
    from ray._private.thirdparty.pathspec import PathSpec

    secret = PathSpec.from_lines("gitwildmatch", SECRET_PATTERNS)
    bulky = PathSpec.from_lines("gitwildmatch", BULKY_EXCLUDES)
    found: list[str] = []
    seen = 0
    for root, dirs, files in os.walk(working):  # followlinks=False: a link to $HOME is not scanned
        here = Path(root).relative_to(working)
        entered = []
        for name in sorted(dirs):
            path = (here / name).as_posix()
            if secret.match_file(path):
                found.append(f"{path}/")
            elif not bulky.match_file(path):
                entered.append(name)
        dirs[:] = entered
        found += [
            path for path in ((here / name).as_posix() for name in sorted(files)) if secret.match_file(path)
        ]
        seen += len(dirs) + len(files)
        if seen > limit:
            break
    return found


def exit_code(info: Any) -> int:
    """The job's outcome as this process's exit code."""
    status = str(getattr(info.status, "value", info.status))
    if status == "SUCCEEDED":
        return 0
    code = getattr(info, "driver_exit_code", None)
    if status == "FAILED" and isinstance(code, int) and code > 0:
        return code
    return 1  # STOPPED, or FAILED before the driver ran (runtime env set-up, lost head node)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """CI runners cancel with SIGINT, then SIGTERM: treat both as Ctrl-C."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


async def _stream_logs(client: Any, submission_id: str) -> None:
    async for lines in client.tail_job_logs(submission_id):
        sys.stdout.write(lines)
        sys.stdout.flush()


def _wait_until_terminal(client: Any, submission_id: str, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        info = client.get_job_info(submission_id)
        if str(getattr(info.status, "value", info.status)) in TERMINAL or time.monotonic() > deadline:
            return info
        time.sleep(1.0)


def submit_search(
    spec_path: str,
    overrides: Sequence[str],
    *,
    address: str | None,
    working_dir: str = ".",
    wait: bool = True,
    python: str = "python",
) -> int:
    from ray.job_submission import JobSubmissionClient

    submission = prepare_submission(spec_path, overrides, working_dir, python)
    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise UserInputError(
            f"cannot reach the Ray job server at {address or '$RAY_ADDRESS'}: {exc}. Pass the dashboard "
            "address, e.g. --address http://HEAD:8265 (and RAY_AUTH_MODE=token with the cluster's token)"
        ) from None
    submission_id = client.submit_job(
        entrypoint=submission.entrypoint,
        runtime_env=submission.runtime_env,
        submission_id=submission.submission_id,
        metadata={"tlsearch_search": submission.spec.name, "tlsearch_spec": spec_path},
    )
    print(f"[tlsearch] submitted job {submission_id}: {submission.entrypoint}", flush=True)
    if not wait:
        print(f"[tlsearch] follow it with: ray job logs --follow {submission_id}", flush=True)
        return 0
    try:
        with _sigterm_as_interrupt():
            asyncio.run(_stream_logs(client, submission_id))
            info = _wait_until_terminal(client, submission_id, timeout_s=60)
    except KeyboardInterrupt:
        print(f"\n[tlsearch] interrupted: stopping job {submission_id}", file=sys.stderr, flush=True)
        client.stop_job(submission_id)
        info = _wait_until_terminal(client, submission_id, timeout_s=60)
        print(f"[tlsearch] job {submission_id}: {info.status}", file=sys.stderr, flush=True)
        return 130
    code = exit_code(info)
    status = str(getattr(info.status, "value", info.status))
    print(
        f"[tlsearch] job {submission_id}: {status}"
        + (f" (driver exit code {info.driver_exit_code})" if info.driver_exit_code is not None else "")
        + (f": {info.message}" if code and info.message else ""),
        file=sys.stderr if code else sys.stdout,
        flush=True,
    )
    return code
