"""Waiting on Ray jobs submitted to a cluster's job API (`ray job submit` or the SDK)."""

from __future__ import annotations

import time


def wait_for_job(address: str, job_id: str, timeout_s: float, poll_s: float = 1.0) -> tuple[str, str]:
    """Block until job ``job_id`` at dashboard ``address`` ends; returns (status name, its logs).

    Raises TimeoutError naming the job if it is still running after ``timeout_s`` seconds.
    """
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    deadline = time.monotonic() + timeout_s
    while (status := client.get_job_status(job_id)) not in {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.STOPPED,
    }:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"Ray job {job_id} still {status} after {timeout_s:.0f} s; see `ray job logs {job_id}`"
            )
        time.sleep(poll_s)
    return str(status.value), client.get_job_logs(job_id)
