"""The evaluation service: finds checkpoints of tracked runs and evaluates each exactly once.

    service = EvalService(tracking_uri, EvalConfig(...), trusted_roots=["s3://bucket/checkpoints"])
    service.serve(poll_s=60)          # forever; or service.run_once() for one sweep

Per checkpoint (see :mod:`evaluation.markers` for the tag it keeps on the training run):

1. claim: write a ``running`` marker (next attempt, this host:pid, a lease), wait ``settle_s`` and
   read it back; another service that claimed at the same moment wins or loses cleanly, since the
   last write is what both read back.
2. evaluate while a heartbeat thread renews the lease every ``lease_s / 3``; a killed service stops
   renewing, so after the lease (or at once, on the same host, since its pid is gone) the checkpoint
   is claimable again and the next attempt's evaluation run replaces the interrupted one. An
   evaluation cut by an outage (tracking server or object store unreachable) gives its claim back as
   soon as the server answers again, so its retake does not wait the lease out.
3. publish (:mod:`evaluation.publish`): details and figures while the lease is still renewed, then
   the training run's metrics in one batch with the ``done`` marker; any exception instead ends in a
   ``failed`` marker with the reason, and the service goes on.

MLflow has no compare-and-swap, so two services on one tracking server are safe only up to the
settle window; run one service per tracking server (restarts are what the markers are for).
"""

from __future__ import annotations

import logging
import os
import posixpath
import threading
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace

from mlflow.tracking import MlflowClient

from dataloading.config import StorageConfig
from dataloading.storage import transient
from evaluation.discovery import Checkpoint, discover
from evaluation.markers import REASON_CHARS, Marker, marker_key, this_owner
from evaluation.publish import commit, publish, start_eval_run
from evaluation.suite import Baselines, Report, evaluate_checkpoint, results_from_metrics
from trainer.config import EvalConfig
from trainer.outbox import brief, is_transient, quick_http_failures

log = logging.getLogger(__name__)

CLAIMABLE = ("queued", "stale")


def outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the tracking server or the object store is unreachable for now."""
    return is_transient(exc) or transient(exc)


MAX_ATTEMPTS = 3


def normalized(url: str) -> str:
    """``url`` with ``.``/``..`` segments resolved and no trailing slash; a plain path or ``file://``
    URL becomes an absolute path (as :func:`dataloading.storage.filesystem` reads it)."""
    if url.startswith("file://"):
        url = url.removeprefix("file://")
    if "://" not in url:
        return os.path.abspath(os.path.expanduser(url))
    scheme, path = url.split("://", 1)
    return f"{scheme}://{posixpath.normpath('/' + path).lstrip('/')}"


def is_trusted(url: str, roots: Sequence[str]) -> bool:
    """True if checkpoint ``url`` lies under one of ``roots`` (whole path segments: ``s3://b/runs``
    does not cover ``s3://b/runs-other``)."""
    target = normalized(url)
    return any(target == root or target.startswith(root + "/") for root in map(normalized, roots))


class EvalService:
    """Evaluates the checkpoints recorded on ``tracking_uri`` that lie under ``trusted_roots`` (URL
    prefixes; others get a ``failed`` marker naming the URL), with the tasks, device, watched
    experiments and lease of ``suite`` (the ``eval`` config section). See the module docstring."""

    def __init__(
        self,
        tracking_uri: str,
        suite: EvalConfig,
        storage: StorageConfig | None = None,
        *,
        trusted_roots: Sequence[str],
        settle_s: float = 1.0,
    ) -> None:
        quick_http_failures()  # an unreachable server fails a call at once; the sweeps decide when to retry
        self.client = MlflowClient(tracking_uri)
        self.suite, self.storage = suite, storage
        self.trusted_roots = tuple(trusted_roots)
        self.experiments = suite.experiments  # names to watch; empty: every experiment
        self.lease_s, self.settle_s = suite.lease_s, settle_s
        self._lock = threading.Lock()  # orders heartbeat renewals before the final marker
        self._baselines = Baselines()  # random init and the like, shared by a run's checkpoints
        self._cut: list[tuple[Checkpoint, Marker]] = []  # claims an outage cut short, to give back
        self._down_since: float | None = None  # an outage is said once when it starts and once when it ends

    def queue(self) -> list[Checkpoint]:
        """Checkpoints that are not evaluated and not being evaluated, oldest first."""
        return [c for c in discover(self.client, self.storage, self.experiments) if c.state in CLAIMABLE]

    def run_once(self) -> list[Marker]:
        """Evaluate every claimable checkpoint once; returns the final markers of those it took."""
        self._give_back_cut_claims()
        queue = self.queue()
        if self._down_since is not None:
            log.info("the services answer again after %.0f s", time.monotonic() - self._down_since)
            self._down_since = None
        finished = []
        for ckpt in queue:
            marker = self.evaluate(ckpt)
            if marker is not None:
                finished.append(marker)
        return finished

    def serve(self, poll_s: float, stop: threading.Event | None = None) -> None:
        """Sweep, then wait ``poll_s`` seconds, until ``stop`` is set (forever without one).

        A sweep that fails (tracking server or storage unreachable) is logged and retried next poll.
        """
        stop = stop or threading.Event()
        log.info(
            "evaluation service %s polling %s every %.0f s", this_owner(), self.client.tracking_uri, poll_s
        )
        while not stop.is_set():
            try:
                self.run_once()
            except Exception as exc:
                if not outage(exc):
                    log.exception("sweep failed; retrying in %.0f s", poll_s)
                elif self._down_since is None:
                    log.warning(
                        "sweep failed: a service is unreachable (%s); retrying every %.0f s",
                        brief(exc),
                        poll_s,
                    )
                    self._down_since = time.monotonic()
            stop.wait(poll_s)

    def evaluate(self, ckpt: Checkpoint) -> Marker | None:
        """Claim, evaluate and publish one checkpoint; None if it is not (or no longer) ours to take."""
        current = self._marker(ckpt)
        if current is not None and not current.stale():
            return None  # finished or taken since it was listed
        attempt = (current.attempt if current else 0) + 1
        if not is_trusted(ckpt.url, self.trusted_roots):
            # Whoever can tag a run can name any file; loading one is never done for them.
            reason = (
                f"refused: {ckpt.url} is outside the trusted checkpoint roots "
                f"{list(self.trusted_roots)} (add its root to eval.trusted_roots to evaluate it)"
            )
            log.warning("run %s step %d: %s", ckpt.run_id, ckpt.step, reason)
            final = Marker("failed", attempt, reason=reason)
            self._write(ckpt, final)
            return final
        if attempt > MAX_ATTEMPTS:
            # Interrupted every time (e.g. the evaluation itself gets the process OOM-killed): give up.
            reason = f"interrupted {MAX_ATTEMPTS} times, last on {current.owner if current else '?'}"
            final = Marker("failed", attempt - 1, eval_run=current.eval_run if current else "", reason=reason)
            self._write(ckpt, final)
            if final.eval_run:
                self.client.set_terminated(final.eval_run, "KILLED")
            return final
        claim = Marker("running", attempt, this_owner(), time.time() + self.lease_s)
        self._write(ckpt, claim)
        time.sleep(self.settle_s)
        back = self._marker(ckpt)
        if back is None or (back.owner, back.attempt) != (claim.owner, claim.attempt):
            log.info("step %d of run %s was claimed by %s", ckpt.step, ckpt.run_id, back and back.owner)
            return None
        if current is not None and current.eval_run:
            self.client.set_terminated(current.eval_run, "KILLED")  # the interrupted attempt
        claim.eval_run = start_eval_run(self.client, ckpt, attempt, self.suite)
        self._write(ckpt, claim)
        log.info("evaluating run %s step %d (attempt %d): %s", ckpt.run_id, ckpt.step, attempt, ckpt.url)
        with self._heartbeat(ckpt, claim) as stop:
            try:
                report = evaluate_checkpoint(ckpt.url, self.suite, self.storage, self._baselines)
                metrics = publish(self.client, ckpt, claim.eval_run, report)
                final = Marker("done", attempt, eval_run=claim.eval_run, seconds=round(report.seconds, 1))
                with self._lock:
                    stop.set()
                    commit(self.client, ckpt, metrics, {marker_key(ckpt.step): final.to_tag()})
            except Exception as exc:
                if outage(exc):  # not the checkpoint's fault: a later sweep retakes it
                    self._cut.append((ckpt, claim))
                    raise
                reason = "".join(traceback.format_exception_only(exc)).strip()[-REASON_CHARS:]
                log.exception("evaluation of %s failed", ckpt.url)
                final = Marker("failed", attempt, eval_run=claim.eval_run, reason=reason)
                with self._lock:
                    stop.set()
                    self.client.set_tag(claim.eval_run, "avsa.eval.error", reason)
                    self.client.set_terminated(claim.eval_run, "FAILED")
                    self._write(ckpt, final)
        log.info("run %s step %d: %s", ckpt.run_id, ckpt.step, final.state)
        return final

    def _give_back_cut_claims(self) -> None:
        """Expire the leases of the evaluations an outage cut short (raises while it lasts)."""
        while self._cut:
            ckpt, claim = self._cut[-1]
            self._write(ckpt, replace(claim, lease_until=0.0))
            self._cut.pop()
            log.info("run %s step %d: evaluation cut by an outage; queued again", ckpt.run_id, ckpt.step)

    def _marker(self, ckpt: Checkpoint) -> Marker | None:
        tag = self.client.get_run(ckpt.run_id).data.tags.get(marker_key(ckpt.step))
        return Marker.from_tag(tag) if tag else None

    def _write(self, ckpt: Checkpoint, marker: Marker) -> None:
        self.client.set_tag(ckpt.run_id, marker_key(ckpt.step), marker.to_tag())

    @contextmanager
    def _heartbeat(self, ckpt: Checkpoint, marker: Marker) -> Iterator[threading.Event]:
        """Renew ``marker``'s lease until the yielded event is set (under the lock) or the block ends."""
        stop = threading.Event()

        def beat() -> None:
            failing = False  # said once per outage, not at every beat
            while not stop.wait(self.lease_s / 3):
                with self._lock:
                    if stop.is_set():
                        return
                    marker.lease_until = time.time() + self.lease_s
                    try:
                        self._write(ckpt, marker)
                    except Exception as exc:
                        if not failing:
                            log.warning("lease renewal failed (%s); retrying", brief(exc))
                        failing = True
                    else:
                        failing = False

        thread = threading.Thread(target=beat, name="eval-heartbeat", daemon=True)
        thread.start()
        try:
            yield stop
        finally:
            stop.set()
            thread.join()


def run_reports(tracking_uri: str, run_id: str, labels: Mapping[int, str]) -> dict[str, Report]:
    """{label: Report} for the evaluated steps of training run ``run_id``, rebuilt from the metrics the
    service logged there (``labels``: step → row label), ready for :func:`evaluation.suite.format_table`.

    Steps not evaluated (yet) are left out. The reports carry scores only, no plot details.
    """
    client = MlflowClient(tracking_uri)
    keys = [k for k in client.get_run(run_id).data.metrics if k.startswith("eval/") and k.count("/") == 3]
    values = {k: {m.step: m.value for m in client.get_metric_history(run_id, k)} for k in keys}
    reports = {}
    for step, label in labels.items():
        results = results_from_metrics({k: v[step] for k, v in values.items() if step in v})
        if results:
            reports[label] = Report(f"run {run_id} step {step}", step, run_id, results, 0.0)
    return reports


def status(
    tracking_uri: str, storage: StorageConfig | None = None, experiments: Sequence[str] = ()
) -> list[Checkpoint]:
    """Every checkpoint of every tracked run (of ``experiments``; all when empty) with its state."""
    return discover(MlflowClient(tracking_uri), storage, experiments)


def format_status(checkpoints: list[Checkpoint]) -> str:
    """A table of run, step, state, attempt, owner or lease, evaluation run and failure reason, with a
    count per state at the end."""
    now = time.time()
    lines = []
    for c in checkpoints:
        m = c.marker
        detail = ""
        if m is not None and m.state == "running":
            detail = f"{m.owner}, lease {m.lease_until - now:+.0f} s"
        elif m is not None and m.state == "failed":
            detail = m.reason.splitlines()[-1][:120] if m.reason else ""
        elif m is not None and m.state == "done":
            detail = f"{m.seconds:.0f} s"
        attempt = m.attempt if m else 0
        lines.append(
            f"{c.run_id}  {c.step:>9}  {c.state:<7}  {attempt:>7}  {(m.eval_run if m else ''):<32}  {detail}"
        )
    counts = {
        s: sum(c.state == s for c in checkpoints) for s in ("queued", "stale", "running", "done", "failed")
    }
    header = f"{'run':<32}  {'step':>9}  {'state':<7}  {'attempt':>7}  {'evaluation run':<32}  detail"
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    return "\n".join([header, *lines, summary])
