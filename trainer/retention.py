"""``train.keep_checkpoints N``: which checkpoints of a run to delete, and deleting one safely.

Kept: the N newest checkpoints of the run, every stage-end checkpoint (``stage_end`` in its
``meta.json``), and every one the evaluation service has not finished with. The service records its
progress on the training run, one tag per checkpoint (:func:`marker_key`, see
:mod:`evaluation.markers`): none while queued, ``running`` under a lease it renews while it reads the
checkpoint, then ``done`` or ``failed``, which are final: the service never claims or reads that
checkpoint again.

That is the protocol which keeps a deletion from racing an evaluation: retention deletes only
checkpoints whose marker it read as final, and the service reads a checkpoint only between its
``running`` claim and its final marker. A claim made after retention read the tags is on a checkpoint
whose marker was not final, so not on one being deleted. Without tracking no service can evaluate the
run, and only the N newest and the stage ends are kept. (A one-off ``avsa eval --checkpoint`` is not
part of the protocol.)

Deleting one checkpoint: first a ``deleting`` file (naming the run), then ``meta.json`` (from then on
:func:`trainer.checkpoint.resolve` and the service's discovery see an incomplete tag and skip it), then
the rest. ``latest`` names the newest checkpoint, which is never deleted. A deletion killed midway
leaves the ``deleting`` file behind, and the next pass finishes the job.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dataloading.config import StorageConfig
from dataloading.storage import filesystem, join, write_bytes_atomic
from trainer.checkpoint import META, TAG_NAME, read_meta, read_text, tag_for_step
from trainer.config import Config

log = logging.getLogger(__name__)

EVAL_PREFIX = "eval."  # the evaluation service's marker tags: eval.step_00001000
FINAL = ("done", "failed")  # marker states after which the service never reads the checkpoint again
DELETING = "deleting"


def marker_key(step: int) -> str:
    """The tag key of the evaluation marker of the checkpoint saved after ``step`` steps."""
    return EVAL_PREFIX + tag_for_step(step)


def evaluated(tags: Mapping[str, str], step: int) -> bool:
    """True when the run's ``tags`` say the service has finished with the checkpoint of ``step``."""
    value = tags.get(marker_key(step))
    return value is not None and json.loads(value).get("state") in FINAL


@dataclass(frozen=True)
class Saved:
    """One complete checkpoint of a run."""

    step: int
    url: str
    stage_end: str | None


def saved_checkpoints(
    root: str, run_id: str | None, storage: StorageConfig | None = None
) -> tuple[list[Saved], list[str]]:
    """The run's complete checkpoints under ``root`` by step, and the URLs of its half-deleted ones."""
    fs, path = filesystem(root, storage)
    fs.invalidate_cache()
    saved, leftovers = [], []
    for entry in fs.ls(path, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if not TAG_NAME.fullmatch(name):
            continue
        url = join(root, name)
        if (owner := read_text(join(url, DELETING), storage)) is not None:
            if owner == (run_id or ""):
                leftovers.append(url)
            continue
        try:
            meta = read_meta(url, storage)
        except FileNotFoundError:
            continue  # being written, or abandoned mid-save: the next save of that step overwrites it
        if meta.get("run_id") == run_id:
            saved.append(Saved(int(meta["step"]), url, meta.get("stage_end")))
    return sorted(saved, key=lambda s: s.step), leftovers


def to_delete(saved: list[Saved], keep: int, is_evaluated: Callable[[int], bool] | None) -> list[Saved]:
    """The checkpoints of ``saved`` (by step) that retention removes; ``is_evaluated`` None means no
    evaluation service can know the run (tracking off)."""
    if keep < 1:
        raise ValueError(f"train.keep_checkpoints must be at least 1 to delete anything; got {keep}")
    newest = {s.step for s in saved[-keep:]}
    return [
        s
        for s in saved
        if s.step not in newest and not s.stage_end and (is_evaluated is None or is_evaluated(s.step))
    ]


def delete_checkpoint(url: str, run_id: str | None, storage: StorageConfig | None = None) -> None:
    """Remove one checkpoint folder so that no reader ever takes what is left for a checkpoint."""
    fs, path = filesystem(url, storage)
    write_bytes_atomic(join(url, DELETING), (run_id or "").encode(), storage)
    if fs.exists(join(path, META)):
        fs.rm_file(join(path, META))
    for name in fs.ls(path, detail=False):
        if name.rstrip("/").rsplit("/", 1)[-1] != DELETING:
            fs.rm(name, recursive=True)
    fs.rm(path, recursive=True)  # the marker last, and the folder where folders exist


def prune(
    root: str,
    run_id: str | None,
    keep: int,
    storage: StorageConfig | None = None,
    tags: Mapping[str, str] | None = None,
) -> list[str]:
    """Apply retention to the run's checkpoints under ``root`` (``tags``: the run's MLflow tags, None
    without tracking); finishes deletions an earlier pass left half done. Returns the deleted URLs."""
    saved, leftovers = saved_checkpoints(root, run_id, storage)
    doomed = to_delete(saved, keep, None if tags is None else lambda step: evaluated(tags, step))
    for url in [*leftovers, *(s.url for s in doomed)]:
        delete_checkpoint(url, run_id, storage)
    return [*leftovers, *(s.url for s in doomed)]


def apply_retention(cfg: Config, tracker: Any) -> None:
    """:func:`prune` for the job's run (rank 0, after a checkpoint). A failure is logged and training
    goes on: the checkpoints are only kept longer."""
    try:
        deleted = prune(
            cfg.train.checkpoint_url, tracker.run_id, cfg.train.keep_checkpoints, cfg.storage, tracker.tags()
        )
    except Exception as exc:  # s3fs and MLflow raise their own types, not only OSError
        why = f"{type(exc).__name__}: {exc}"
        log.warning("checkpoint retention failed (%s); trying again after the next checkpoint", why)
        return
    if deleted:
        log.info("retention: deleted %s", ", ".join(url.rsplit("/", 1)[-1] for url in deleted))
