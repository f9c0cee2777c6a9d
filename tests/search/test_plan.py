"""Resource planning: what a trial holds and how many trials run at once, from the cluster's size."""

from __future__ import annotations

import pytest

from tlsearch.errors import UserInputError
from tlsearch.search.runner import plan_resources
from tlsearch.search.trainable import DRIVER_CPUS
from tlsearch.spec import validate_spec

BASE = {
    "name": "p",
    "model": {"source": "hf", "name": "builtin:all-minilm-l6-v2", "task": "text-classification"},
    "data": {"builtin": "bbc-news"},
}


def spec(resources: dict, **search: object):  # type: ignore[no-untyped-def]
    return validate_spec({**BASE, "resources": resources, "search": {"num_samples": 100, **search}})


def test_single_worker_trials_on_cpu() -> None:
    use_gpu, actor, concurrent = plan_resources(spec({"cpus_per_worker": 2}), {"CPU": 16})
    assert (use_gpu, actor, concurrent) == (False, {"cpu": 2, "gpu": 0.0}, 8)


def test_gpus_auto_one_per_worker_and_fractional_packing() -> None:
    assert plan_resources(spec({"cpus_per_worker": 2}), {"CPU": 16, "GPU": 4})[1:] == (
        {"cpu": 2, "gpu": 1.0},
        4,
    )
    packed = plan_resources(spec({"cpus_per_worker": 1, "gpus_per_worker": 0.25}), {"CPU": 16, "GPU": 2})
    assert packed[1:] == ({"cpu": 1, "gpu": 0.25}, 8)
    assert plan_resources(spec({"use_gpu": False}), {"CPU": 4, "GPU": 8})[0] is False


def test_multi_worker_trials_count_their_whole_need() -> None:
    use_gpu, actor, concurrent = plan_resources(
        spec({"workers_per_trial": 4, "cpus_per_worker": 2}), {"CPU": 64, "GPU": 8}
    )
    assert use_gpu and actor == {"cpu": DRIVER_CPUS}
    assert concurrent == 2  # 8 GPUs / (4 workers x 1 GPU), though the trial actor itself holds no GPU


def test_user_cap_and_num_samples_bound_concurrency() -> None:
    assert plan_resources(spec({}, max_concurrent=3), {"CPU": 32})[2] == 3
    assert plan_resources(spec({}, num_samples=2), {"CPU": 32})[2] == 2


def test_a_trial_that_cannot_fit_is_refused() -> None:
    with pytest.raises(UserInputError, match=r"one trial needs 4\.01 CPUs"):
        plan_resources(spec({"workers_per_trial": 2, "cpus_per_worker": 2}), {"CPU": 2})
    with pytest.raises(UserInputError, match="has no GPUs"):
        plan_resources(spec({"use_gpu": True}), {"CPU": 8})


def test_trial_drivers_ask_for_their_custom_resource_and_it_bounds_concurrency() -> None:
    resources = {"workers_per_trial": 2, "trial_driver_resources": {"trial_driver": 1}}
    _, actor, concurrent = plan_resources(spec(resources), {"CPU": 64, "GPU": 16, "trial_driver": 3})
    assert actor == {"cpu": DRIVER_CPUS, "custom_resources": {"trial_driver": 1}}
    assert concurrent == 3  # GPUs would allow 8 trials, the stable nodes hold 3 drivers
    with pytest.raises(UserInputError, match="has 0: start the nodes that should run trial drivers"):
        plan_resources(spec(resources), {"CPU": 64, "GPU": 16})


def test_an_explicit_max_concurrent_waits_for_the_autoscaler_instead_of_refusing() -> None:
    # A cluster scaled down to its CPU head: GPU nodes and trial-driver capacity come on demand.
    head_only = {"CPU": 1, "trial_driver": 0}
    resources = {"workers_per_trial": 2, "use_gpu": True, "trial_driver_resources": {"trial_driver": 1}}
    with pytest.raises(UserInputError, match=r"set search\.max_concurrent"):
        plan_resources(spec(resources), head_only)
    use_gpu, actor, concurrent = plan_resources(spec(resources, max_concurrent=4), head_only)
    assert use_gpu and concurrent == 4 and actor["custom_resources"] == {"trial_driver": 1}
