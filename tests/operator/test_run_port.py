"""asyncmtl_operator.run_port's pure functions over Kubernetes objects (as the API returns them, dicts):
why a pod cannot run (`pod_problem`), when an inference Job counts as stuck Pending (`inference_stuck`),
and RFC 3339 timestamps (`parse_time`)."""
from __future__ import annotations

import calendar

import pytest

from asyncmtl.spec import parse_run
from asyncmtl_operator.run_port import WAITING_REASONS, inference_stuck, parse_time, pod_problem
from tests.conftest import builtin_task, run_doc

# ---- parse_time -------------------------------------------------------------------------------

EPOCH_2026_11_22_04_38_27 = calendar.timegm((2026, 11, 22, 4, 38, 27, 0, 0, 0))


@pytest.mark.parametrize("text, seconds", [
    ("2026-11-22T04:38:27Z", EPOCH_2026_11_22_04_38_27),
    ("2026-11-22T04:38:27+00:00", EPOCH_2026_11_22_04_38_27),
    ("2026-11-22T06:38:27+02:00", EPOCH_2026_11_22_04_38_27),
    ("2026-11-21T23:38:27-05:00", EPOCH_2026_11_22_04_38_27),
    ("2026-11-22T04:38:27.250000Z", EPOCH_2026_11_22_04_38_27 + 0.25),
    ("2026-11-22T04:38:27", EPOCH_2026_11_22_04_38_27),  # no zone: UTC, as the API server writes
    ("1970-01-01T00:00:00Z", 0),
])
def test_parse_time_is_seconds_since_the_epoch_in_utc(text, seconds):
    assert parse_time(text) == pytest.approx(seconds, abs=1e-6)


def test_parse_time_orders_timestamps_across_zones():
    assert parse_time("2026-01-01T00:00:00+01:00") < parse_time("2026-01-01T00:00:00Z") < \
        parse_time("2026-01-01T00:00:00-01:00")


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01T00:00:00Z"])
def test_parse_time_refuses_what_is_not_a_timestamp(text):
    with pytest.raises(ValueError):
        parse_time(text)


# ---- pod_problem ------------------------------------------------------------------------------

def _waiting(reason: str, message: str | None = "details") -> dict:
    w = {"reason": reason}
    if message is not None:
        w["message"] = message
    return {"name": "main", "state": {"waiting": w}}


@pytest.mark.parametrize("reason", sorted(WAITING_REASONS))
def test_a_container_waiting_for_a_reason_it_cannot_get_past_is_the_pod_s_problem(reason):
    pod = {"status": {"phase": "Pending", "containerStatuses": [_waiting(reason, f"why {reason}")]}}
    assert pod_problem(pod) == (reason, f"why {reason}")


def test_the_documented_waiting_reasons_are_known():
    assert {"ImagePullBackOff", "ErrImagePull", "CrashLoopBackOff", "CreateContainerConfigError"} <= WAITING_REASONS


def test_an_init_container_s_problem_counts_too():
    pod = {"status": {"initContainerStatuses": [_waiting("ErrImagePull", "no such image: x:1")],
                      "containerStatuses": [_waiting("PodInitializing")]}}
    assert pod_problem(pod) == ("ErrImagePull", "no such image: x:1")


def test_the_first_problem_container_is_reported_and_a_missing_message_is_empty():
    pod = {"status": {"containerStatuses": [_waiting("ContainerCreating"), _waiting("CrashLoopBackOff", None),
                                            _waiting("ImagePullBackOff")]}}
    assert pod_problem(pod) == ("CrashLoopBackOff", "")


@pytest.mark.parametrize("status", [
    {},
    {"phase": "Running", "containerStatuses": [{"name": "main", "state": {"running": {"startedAt": "x"}}}]},
    {"phase": "Pending", "containerStatuses": [_waiting("ContainerCreating")]},
    {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]},
    {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]},
    {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False", "reason": "Unschedulable"}]},
    {"containerStatuses": None, "initContainerStatuses": None, "conditions": None},
])
def test_a_pod_that_is_starting_or_running_has_no_problem(status):
    assert pod_problem({"status": status}) == ("", "")


def test_a_pod_without_a_status_yet_has_no_problem():
    assert pod_problem({}) == ("", "")
    assert pod_problem({"metadata": {"name": "p"}, "status": None}) == ("", "")


def test_an_unschedulable_pod_says_why_or_that_no_node_fits():
    cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}
    assert pod_problem({"status": {"conditions": [cond]}}) == ("Unschedulable", cond["message"])
    bare = {k: v for k, v in cond.items() if k != "message"}
    reason, message = pod_problem({"status": {"conditions": [bare]}})
    assert reason == "Unschedulable" and message  # a default explanation


def test_a_container_problem_is_reported_before_the_scheduling_condition():
    pod = {"status": {"containerStatuses": [_waiting("ImagePullBackOff", "pull")],
                      "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}}
    assert pod_problem(pod) == ("ImagePullBackOff", "pull")


# ---- inference_stuck --------------------------------------------------------------------------

NOW = EPOCH_2026_11_22_04_38_27


def _run(**distillation):
    doc = run_doc([builtin_task("sentiment"), builtin_task("sarcasm")], distillation=distillation)
    return parse_run(doc)


def _job(age: float | None, **status) -> dict:
    meta = {"name": "r-infer-sentiment-40"}
    if age is not None:
        meta["creationTimestamp"] = _rfc3339(NOW - age)
    return {"metadata": meta, "status": status}


def _rfc3339(t: float) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _pod(phase: str) -> dict:
    return {"metadata": {"name": "p"}, "status": {"phase": phase}}


def test_a_job_with_no_pod_run_past_the_pending_timeout_is_stuck():
    run = _run(pendingTimeoutSeconds=600)
    assert inference_stuck(_job(601), [], run, NOW)
    assert inference_stuck(_job(601), [_pod("Pending"), _pod("Pending")], run, NOW)
    assert inference_stuck(_job(601, active=2), [_pod("Pending")], run, NOW)  # Pending pods count as active


def test_a_job_within_its_pending_timeout_is_not_stuck():
    run = _run(pendingTimeoutSeconds=600)
    assert not inference_stuck(_job(599), [], run, NOW)
    assert not inference_stuck(_job(0), [_pod("Pending")], run, NOW)


def test_the_default_pending_timeout_applies_when_the_spec_sets_none():
    run = _run()
    timeout = run.spec.distillation.pending_timeout_seconds
    assert timeout > 0
    assert not inference_stuck(_job(timeout - 1), [], run, NOW)
    assert inference_stuck(_job(timeout + 1), [], run, NOW)


@pytest.mark.parametrize("status", [{"ready": 1}, {"succeeded": 1}, {"failed": 1}, {"ready": 1, "active": 2}])
def test_a_job_one_of_whose_pods_has_run_is_never_stuck(status):
    assert not inference_stuck(_job(10_000, **status), [], _run(pendingTimeoutSeconds=60), NOW)


@pytest.mark.parametrize("phase", ["Running", "Succeeded", "Failed"])
def test_a_pod_that_runs_or_ran_means_the_job_is_not_stuck(phase):
    pods = [_pod("Pending"), _pod(phase)]
    assert not inference_stuck(_job(10_000), pods, _run(pendingTimeoutSeconds=60), NOW)


def test_a_job_without_a_creation_time_is_not_judged():
    run = _run(pendingTimeoutSeconds=60)
    assert not inference_stuck(_job(None), [], run, NOW)
    assert not inference_stuck({}, [], run, NOW)


def test_zero_counts_in_the_job_status_mean_nothing_started():
    assert inference_stuck(_job(120, ready=0, succeeded=0, failed=0, active=1), [_pod("Pending")],
                           _run(pendingTimeoutSeconds=60), NOW)
