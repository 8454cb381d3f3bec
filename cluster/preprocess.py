"""Raw 360° videos with FOA -> WebDataset shards + DALI indexes + manifest.json, on a pool of Ray actors.

1. List the inputs (a folder, one file, or a manifest listing URLs), probe each on the pool;
   inputs that cannot be used are rejected with a reason.
2. Plan: the clips of the accepted inputs, in URL order, cut into shards of at most ``shard_size`` clips,
   all of the same size give or take one (no short last shard to leave an actor idle at the end).
   The plan is a function of the inputs and settings only, so re-runs are idempotent.
3. Each actor owns whole shards: transcode, find viewpoint candidates, write the tar and its index,
   upload both atomically. A shard already in the manifest whose tar still has the recorded checksum
   is skipped; anything else is (re)made. An actor that dies is restarted by Ray and its shard redone;
   one Ray cannot reach (its node is gone) is replaced by the driver, which gives the shard out again.
4. The driver records each finished shard in ``manifest.json`` (rewritten atomically) as it goes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import ray
from tqdm import tqdm

from cluster.detect import ObjectFinder, make_detectors
from dataloading.config import PreprocessConfig, StorageConfig
from dataloading.dcase import LabelError, clip_rows
from dataloading.layouts import Layout, LayoutError, listing, read_labels
from dataloading.schema import (
    INPUT_ACCEPTED,
    INPUT_REJECTED,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    VIDEO_SUFFIXES,
    AudioStream,
    DatasetOrigin,
    InputEntry,
    Manifest,
    RunInfo,
    SampleMeta,
    SchemaError,
    Settings,
    ShardEntry,
    ShardResult,
    VideoStream,
    sample_key,
    shard_name,
    source_id,
)
from dataloading.shards import read_manifest
from dataloading.shardwriter import ShardWriter, sha256_url
from dataloading.storage import TEMP_MARK, filesystem, join, storage_options, write_bytes_atomic
from dataloading.transcode import InputError, Probe, TranscodedClip, probe, transcode

log = logging.getLogger(__name__)

MANIFEST_LIST_SUFFIXES = (".txt", ".json")
DETECT_FRAMES = 2  # frames per clip given to the detectors (the second also gives motion)
ACTOR_MAX_RESTARTS = 4
TASK_ATTEMPTS = 3  # times the driver gives a probe or shard out when Ray's own retries could not save it
MANIFEST_EVERY_S = 2.0  # seconds between manifest rewrites while shards finish


class PreprocessError(RuntimeError):
    """The run cannot start (bad arguments, unreadable input listing, incompatible output)."""


# ----- inputs and plan ---------------------------------------------------------------------------
def _url(path: str, like: str) -> str:
    """``path`` as a filesystem lists it (no scheme), as a URL in the same scheme as ``like``."""
    return f"{like.split('://', 1)[0]}://{path}" if "://" in like else path


def list_inputs(spec: str, storage: StorageConfig | None = None) -> list[str]:
    """Input URLs, sorted: every video under a folder, a single video, or a listing file
    (``.txt``: one URL per line, ``#`` comments; ``.json``: a list or ``{"inputs": [...]}``)."""
    fs, path = filesystem(spec, storage)
    if spec.lower().endswith(MANIFEST_LIST_SUFFIXES):
        try:
            text = fs.cat_file(path).decode()
        except Exception as exc:
            raise PreprocessError(f"cannot read input listing {spec}: {exc}") from exc
        if spec.lower().endswith(".json"):
            data = json.loads(text)
            urls = data["inputs"] if isinstance(data, dict) else data
        else:
            urls = [line.strip() for line in text.splitlines()]
        return sorted({u for u in urls if u and not u.startswith("#")})
    if fs.isdir(path):
        found = fs.find(path)
        return sorted(
            _url(p, spec) for p in found if p.lower().endswith(VIDEO_SUFFIXES) and TEMP_MARK not in p
        )
    if fs.exists(path):
        return [spec]
    raise PreprocessError(f"input {spec} does not exist")


@dataclass(frozen=True)
class InputParts:
    """What an actor needs of an input beside its video URL: the audio file its dataset layout pairs with
    it (``None``: the video's own track, or a sidecar beside it), its label CSV, and the ``dataset``
    block of its clips' JSON."""

    audio: str | None = None
    labels: str | None = None
    dataset: DatasetOrigin | None = None


def layout_inputs(
    layout: Layout, spec: str, storage: StorageConfig | None = None
) -> tuple[dict[str, InputParts], dict[str, str]]:
    """The inputs of ``spec`` read as ``layout``: video URL -> :class:`InputParts` of each input to probe,
    and URL -> reason for each file of the layout that cannot be one (unpaired, misnamed, mic_dev).

    ``files`` is :func:`list_inputs`; ``starss23`` and ``yt360`` pair files by stem
    (:func:`dataloading.layouts.listing`): a recording needs a video and an audio file, labels are optional.
    """
    if layout == "files":
        return {url: InputParts() for url in list_inputs(spec, storage)}, {}
    try:
        found = listing(layout, spec, storage)
    except LayoutError as exc:
        raise PreprocessError(str(exc)) from exc
    usable = {r.video: InputParts(r.audio, r.labels, r.origin(layout)) for r in found.usable() if r.video}
    return usable, found.rejected()


@dataclass
class ShardPlan:
    """Shard ``name`` holds clips ``(input URL, clip index)`` in this order."""

    name: str
    clips: list[tuple[str, int]] = field(default_factory=list)

    def keys(self) -> list[str]:
        return [sample_key(source_id(url), i) for url, i in self.clips]


def plan_shards(probes: dict[str, Probe], clip_seconds: float, shard_size: int) -> list[ShardPlan]:
    """Cut the clips of ``probes`` (in URL order) into the fewest shards of at most ``shard_size`` clips,
    their sizes differing by at most one: 12 clips at ``shard_size`` 8 make 6 + 6, not 8 + 4, so that
    two actors finish together."""
    clips = [(url, i) for url in sorted(probes) for i in range(len(probes[url].clip_starts(clip_seconds)))]
    count = math.ceil(len(clips) / shard_size)
    bounds = [k * len(clips) // max(1, count) for k in range(count + 1)]
    return [ShardPlan(shard_name(k), clips[bounds[k] : bounds[k + 1]]) for k in range(count)]


def settings_of(cfg: PreprocessConfig, input_spec: str) -> Settings:
    """The settings that determine the samples of ``input_spec`` (a resumed run must match them)."""
    keys = ("clip_seconds", "shard_size", "fps", "codec", "gop", "audio_rate", "input_format", "detector")
    same = {k: getattr(cfg, k) for k in keys}
    return Settings(input=input_spec, video_size=tuple(cfg.video_size), layout=cfg.layout, **same)


# ----- the actor -------------------------------------------------------------------------------------
class PreprocessWorker:
    """Probes inputs and makes whole shards. Runs as a Ray actor (see :func:`worker_class`)."""

    def __init__(self, cfg: PreprocessConfig, storage: StorageConfig) -> None:
        self.cfg, self.storage = cfg, storage
        self.finder = ObjectFinder(make_detectors(cfg.detector))
        n = round(cfg.clip_seconds * cfg.fps)
        # detection frames at 1/3 and 2/3 of the clip: far enough apart for slow objects to show motion
        self.keep = sorted({round(n * (k + 1) / (DETECT_FRAMES + 1)) for k in range(DETECT_FRAMES)})

    def probe(self, url: str, parts: InputParts | None = None) -> Probe | str:
        """The probe of ``url`` with the labels of its recording read, or the reason it is rejected
        (``parts`` None: a plain input, its audio in the video or a sidecar, no labels)."""
        parts = parts or InputParts()
        try:
            found = probe(url, self.cfg, self.storage, parts.audio)
            labels = read_labels(parts.labels, self.storage) if parts.labels else None
            return replace(found, labels=labels, dataset=parts.dataset)
        except (InputError, LabelError) as exc:
            return str(exc)
        except Exception as exc:  # an unexpected failure still only rejects this input
            return f"probe failed: {type(exc).__name__}: {exc}"

    def make_shard(
        self, plan: ShardPlan, probes: dict[str, Probe], output: str, expected_sha: str | None
    ) -> ShardResult:
        """Write shard ``plan`` under ``output`` unless it is already there with ``expected_sha``."""
        started, cpu = time.perf_counter(), time.process_time()
        stem = join(output, plan.name)
        self._remove_leftovers(stem)
        if expected_sha and sha256_url(f"{stem}.tar", self.storage) == expected_sha:
            return ShardResult(plan.name, "skipped", pid=os.getpid())
        written: dict[str, list[int]] = {}
        failed: dict[str, str] = {}
        by_input: dict[str, list[int]] = {}
        for url, i in plan.clips:
            by_input.setdefault(url, []).append(i)
        with ShardWriter(tempfile.gettempdir()) as writer:
            for url, indices in by_input.items():
                try:
                    for clip in transcode(probes[url], indices, self.cfg, self.keep, self.storage):
                        key = sample_key(source_id(url), clip.index)
                        writer.add(
                            key,
                            {
                                "mp4": clip.mp4,
                                "flac": clip.flac,
                                "json": self._json(key, url, probes[url], clip),
                            },
                        )
                        written.setdefault(url, []).append(clip.index)
                except Exception as exc:  # this input's remaining clips are lost; the others go on
                    failed[url] = f"transcode failed: {type(exc).__name__}: {exc}"
                    log.warning("%s: %s", url, failed[url])
            entry = writer.publish(stem, self.storage) if writer.keys else None
        return ShardResult(
            name=plan.name,
            status="written" if entry else "empty",
            entry=entry,
            written=written,
            failed=failed,
            pid=os.getpid(),
            node=ray.util.get_node_ip_address(),
            seconds=time.perf_counter() - started,
            cpu_seconds=time.process_time() - cpu,
        )

    def _remove_leftovers(self, stem: str) -> None:
        """Delete temp uploads of this shard left by a killed attempt (the shard has one owner at a time)."""
        fs, path = filesystem(stem, self.storage)
        for leftover in fs.glob(f"{path}.*{TEMP_MARK}*"):
            fs.rm(leftover)

    def _json(self, key: str, url: str, probe: Probe, clip: TranscodedClip) -> bytes:
        """The sample's JSON, with the viewpoint candidates found in ``clip``."""
        frames = [(i / self.cfg.fps, clip.frames[i]) for i in self.keep if i in clip.frames]
        labels = None if probe.labels is None else clip_rows(probe.labels, clip.start, self.cfg.clip_seconds)
        width, height = self.cfg.video_size
        return SampleMeta(
            key=key,
            source=url,
            start_s=round(clip.start, 6),
            duration_s=round(self.cfg.clip_seconds, 6),
            fps=self.cfg.fps,
            video=VideoStream(width, height, self.cfg.codec),
            audio=AudioStream(self.cfg.audio_rate, probe.input_format),
            objects=tuple(d.record() for d in self.finder.find(frames)),
            detector=self.finder.name,
            labels=labels,
            dataset=probe.dataset,
        ).to_json()


def worker_class() -> Any:
    """:class:`PreprocessWorker` as a Ray actor: one CPU, restarted (its task retried) if it dies, and
    spread over the cluster's nodes so that every node's network link and disk carry a share."""
    options = {
        "num_cpus": 1,
        "max_restarts": ACTOR_MAX_RESTARTS,
        "max_task_retries": ACTOR_MAX_RESTARTS,
        "scheduling_strategy": "SPREAD",
    }
    return ray.remote(**options)(PreprocessWorker)


# ----- the driver ------------------------------------------------------------------------------------
def resolved_storage(storage: StorageConfig | None) -> StorageConfig:
    """S3 settings with the driver's environment folded in, so actors need no AWS env of their own."""
    options = storage_options("s3://", storage)
    return StorageConfig(
        endpoint_url=options.get("endpoint_url"),
        access_key_id=options.get("key"),
        secret_access_key=options.get("secret"),
        region=options.get("client_kwargs", {}).get("region_name"),
        retry_s=(storage or StorageConfig()).retry_s,
    )


def previous_manifest(output: str, storage: StorageConfig) -> Manifest | None:
    """The manifest a run resumes from: None where ``output`` has none, or one of a schema too old to
    migrate (the run then rewrites every shard). A newer schema's is refused: this code would destroy a
    dataset it cannot read."""
    try:
        return read_manifest(output, storage)
    except SchemaError as exc:
        if isinstance(exc.found, int) and exc.found > SCHEMA_VERSION:
            raise PreprocessError(
                f"{output} holds a dataset of schema_version {exc.found}, newer than this avsa's "
                f"{SCHEMA_VERSION}: run the avsa that wrote it, or write to another --output"
            ) from exc
        log.warning(
            "%s: manifest of schema_version %r, too old to migrate: rewriting every shard",
            output,
            exc.found,
        )
        return None


def resumable_shards(previous: Manifest | None, output: str) -> dict[str, ShardEntry]:
    """The shards of ``previous`` a run may skip where the tar still has the recorded checksum: all of a
    manifest of this schema version; none of a migrated older one, whose shards hold samples of that
    older schema, so that the dataset ends up all of this version (the manifest is rewritten in it)."""
    if previous is None:
        return {}
    if previous.written_with != SCHEMA_VERSION:
        log.warning(
            "%s: dataset of schema_version %d: rewriting its shards in version %d",
            output,
            previous.written_with,
            SCHEMA_VERSION,
        )
        return {}
    return previous.shards


@dataclass
class Progress:
    """The live progress line: videos, clips, shards, throughput (clips/s) and ETA."""

    videos: int
    clips: int
    shards: int
    bar: Any = None
    done_shards: int = 0
    done_clips: int = 0

    def __post_init__(self) -> None:
        self.bar = tqdm(
            total=self.clips, unit="clip", desc="avsa preprocess", dynamic_ncols=True, mininterval=1.0
        )
        self.update(0, 0)

    def update(self, clips: int, shards: int) -> None:
        self.done_clips += clips
        self.done_shards += shards
        self.bar.set_postfix_str(
            f"videos={self.videos} shards={self.done_shards}/{self.shards}", refresh=False
        )
        self.bar.update(clips)

    def close(self) -> None:
        self.bar.close()


def run(
    input_spec: str,
    output: str,
    cfg: PreprocessConfig,
    storage: StorageConfig | None = None,
    progress: bool = True,
    on_shard: Callable[[ShardResult], None] | None = None,
) -> Manifest:
    """Preprocess ``input_spec`` into ``output`` on the connected Ray cluster; returns the manifest
    as written.

    ``on_shard`` is called with each shard result as it arrives (tests use it to inject faults).
    """
    started = time.time()
    storage = resolved_storage(storage)
    settings = settings_of(cfg, input_spec)
    previous = previous_manifest(output, storage)
    if previous and previous.settings != settings:
        raise PreprocessError(
            f"{output} holds a dataset made with other settings ({previous.settings}); "
            "use another --output or the same settings"
        )
    parts, refused = layout_inputs(cfg.layout, input_spec, storage)
    urls = sorted(parts)
    if not urls and not refused:
        raise PreprocessError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) found in {input_spec}")

    cpus = int(ray.cluster_resources().get("CPU", 1))
    size = max(1, min(cfg.workers or cpus, len(urls)))
    actor_class = worker_class()

    def new_actor() -> Any:
        return actor_class.remote(cfg, storage)

    pool = [new_actor() for _ in range(size)]
    log.info("%d inputs, %d actors on %d cluster CPUs", len(urls), size, cpus)

    manifest = Manifest(settings)
    found: list[Probe | str] = [""] * len(urls)

    def probed_one(k: int, result: Probe | str | None, error: str | None) -> None:
        found[k] = f"probe failed: {error}" if result is None else result

    run_on_pool(
        pool,
        len(urls),
        lambda actor, k: actor.probe.remote(urls[k], parts[urls[k]]),
        probed_one,
        new_actor,
        urls.__getitem__,
    )
    probed = time.time() - started  # includes the actors' start-up
    probes = {u: p for u, p in zip(urls, found, strict=True) if isinstance(p, Probe)}
    for url, result in zip(urls, found, strict=True):
        if isinstance(result, Probe):
            manifest.inputs[url] = InputEntry(INPUT_ACCEPTED, duration_s=round(result.duration, 3))
        else:
            manifest.inputs[url] = InputEntry(INPUT_REJECTED, reason=result)
            log.warning("rejected %s: %s", url, result)
    for url, reason in refused.items():  # files of the layout that are no input: accounted for all the same
        manifest.inputs[url] = InputEntry(INPUT_REJECTED, reason=reason)
        log.warning("rejected %s: %s", url, reason)
    plans = plan_shards(probes, cfg.clip_seconds, cfg.shard_size)
    recorded = resumable_shards(previous, output)

    bar = Progress(len(probes), sum(len(p.clips) for p in plans), len(plans)) if progress else None
    last_write = time.monotonic()

    statuses: list[str] = []
    shard_cpu: list[float] = []
    nodes: list[str] = []  # the node of each shard written in this run

    def finished(plan: ShardPlan, result: ShardResult) -> None:
        nonlocal last_write
        statuses.append(result.status)
        shard_cpu.append(result.cpu_seconds)
        if result.status == "written":
            nodes.append(result.node)
        _record(manifest, plan, result, recorded)
        if bar:
            bar.update(len(plan.clips), 1)
        if time.monotonic() - last_write > MANIFEST_EVERY_S:  # a killed driver loses little on resume
            _write_manifest(manifest, output, storage)
            last_write = time.monotonic()
        if on_shard:
            on_shard(result)

    redone = _run_shards(pool, plans, probes, output, recorded, finished, new_actor)
    if bar:
        bar.close()
    for entry in manifest.inputs.values():
        if entry.status != INPUT_ACCEPTED:
            continue
        entry.shards.sort()
        if entry.clips == 0:  # none of its clips made it: the input is rejected after all
            entry.status, entry.reason = INPUT_REJECTED, entry.error or "no clip could be made"
            entry.error = None
    manifest.run = RunInfo(
        started=started,
        seconds=round(time.time() - started, 3),
        actors=size,
        probe_seconds=round(probed, 3),
        shard_cpu_seconds=round(sum(shard_cpu), 3),
        shards={s: statuses.count(s) for s in sorted(set(statuses))},
        shards_by_node={n: nodes.count(n) for n in sorted(set(nodes))},
        shards_given_out_again=redone,
    )
    _write_manifest(manifest, output, storage)
    for actor in pool:
        ray.kill(actor)
    return manifest


def _write_manifest(manifest: Manifest, output: str, storage: StorageConfig) -> None:
    write_bytes_atomic(join(output, MANIFEST_NAME), manifest.to_json(), storage)


def _run_shards(
    pool: list[Any],
    plans: list[ShardPlan],
    probes: dict[str, Probe],
    output: str,
    recorded: dict[str, ShardEntry],
    finished: Callable[[ShardPlan, ShardResult], None],
    new_actor: Callable[[], Any],
) -> int:
    """Make every planned shard on ``pool``; ``finished`` gets each result (status ``error`` when
    every attempt failed). Returns how many times a shard was given out again."""

    def submit(actor: Any, k: int) -> Any:
        plan = plans[k]
        known = recorded.get(plan.name)
        sha = known.sha256 if known is not None and known.keys == plan.keys() else None
        return actor.make_shard.remote(plan, {u: probes[u] for u, _ in plan.clips}, output, sha)

    def done(k: int, result: ShardResult | None, error: str | None) -> None:
        finished(plans[k], result or ShardResult(plans[k].name, "error", error=error))

    return run_on_pool(pool, len(plans), submit, done, new_actor, lambda k: f"shard {plans[k].name}")


def run_on_pool(
    pool: list[Any],
    count: int,
    submit: Callable[[Any, int], Any],
    finished: Callable[[int, Any, str | None], None],
    new_actor: Callable[[], Any],
    label: Callable[[int], str] = str,
) -> int:
    """Run tasks ``0 .. count-1`` on the actors of ``pool``, one at a time per actor, in order.

    ``submit(actor, k)`` starts task k and returns its object ref; ``finished(k, result, None)``
    gets each result, or ``finished(k, None, reason)`` once a task failed :data:`TASK_ATTEMPTS` times.
    A task whose failure outlived Ray's own retries goes back to the front of the queue: probing and
    making a shard are idempotent. When the failure was the actor (dead, or unreachable because its
    node is gone and Ray cannot tell whether the task ran), that actor is killed, so no shard ever
    has two writers, and ``new_actor()`` takes its place in ``pool`` wherever the cluster has room.
    Actors get tasks only once they have started, so a pool larger than the room the cluster has left
    runs on the actors that fit. ``label(k)`` names task k in the log. Returns how many times a task
    was given out again.
    """
    queue = list(range(count))
    attempts = [0] * count
    running: dict[Any, tuple[int, Any]] = {}
    # An actor gets work only once it has started: one still waiting for a CPU (another job holds the
    # cluster's) would sit on its task forever while the started ones idle, and two jobs sharing a
    # cluster would each wait on the other's CPUs. Pending actors join as the cluster frees room.
    starting = {actor.__ray_ready__.remote(): actor for actor in pool}
    idle: list[Any] = []

    def replace_actor(actor: Any) -> None:
        ray.kill(actor, no_restart=True)
        fresh = pool[pool.index(actor)] = new_actor()
        starting[fresh.__ray_ready__.remote()] = fresh

    while queue or running:
        while queue and idle:
            k, actor = queue.pop(0), idle.pop(0)
            running[submit(actor, k)] = (k, actor)
            attempts[k] += 1
        ready, _ = ray.wait([*running, *starting], num_returns=1)
        if ready[0] in starting:
            actor = starting.pop(ready[0])
            try:
                ray.get(ready[0])
                idle.append(actor)
            except ray.exceptions.RayActorError as exc:
                log.warning("an actor died while starting (%s); starting another", exc)
                replace_actor(actor)
            continue
        k, actor = running.pop(ready[0])
        try:
            result, error = ray.get(ready[0]), None
        except ray.exceptions.RayError as exc:
            result, error = None, f"{type(exc).__name__}: {exc}"
            if isinstance(exc, ray.exceptions.RayActorError):
                replace_actor(actor)
                actor = None  # its replacement joins the idle ones once it has started
            if attempts[k] < TASK_ATTEMPTS:
                log.warning("%s: attempt %d failed (%s); giving it out again", label(k), attempts[k], error)
                queue.insert(0, k)
                if actor is not None:
                    idle.append(actor)
                continue
            log.error("%s failed %d times, last: %s", label(k), attempts[k], error)
        if actor is not None:
            idle.append(actor)
        finished(k, result, error)
    return sum(attempts) - count


def _record(
    manifest: Manifest, plan: ShardPlan, result: ShardResult, recorded: dict[str, ShardEntry]
) -> None:
    """Fold one shard result into the manifest: the shard's record and its inputs' clip counts."""
    info: ShardEntry | None = None
    if result.status == "skipped":
        info = recorded[plan.name]
    elif result.status == "written" and result.entry is not None:
        inputs = {u: len(c) for u, c in sorted(result.written.items())}
        info = replace(result.entry, inputs=inputs, node=result.node)
    if info:
        manifest.shards[plan.name] = info
    planned: dict[str, int] = {}
    for url, _ in plan.clips:
        planned[url] = planned.get(url, 0) + 1
    for url, count in planned.items():
        entry = manifest.inputs[url]
        made = info.inputs.get(url, 0) if info else 0
        entry.clips += made
        entry.failed_clips += count - made
        if made:
            entry.shards.append(plan.name)
        reason = result.failed.get(url) or result.error
        if reason and entry.error is None:
            entry.error = reason
