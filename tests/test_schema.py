"""The typed sample and manifest records: they round-trip through their JSON, older documents migrate,
and a version this code does not read is refused with a message that names the file and the fix."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dataloading.schema import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    AudioStream,
    DatasetOrigin,
    DetectedObject,
    Manifest,
    RunInfo,
    SampleMeta,
    SchemaError,
    VideoStream,
    direction_deg,
)
from dataloading.shards import list_shards, read_manifest
from tests.helpers import sample_manifest

names = st.text(st.characters(codec="ascii", exclude_categories=("Cc",)), min_size=1, max_size=12)
degrees = st.floats(-180, 180, allow_nan=False).map(lambda x: round(x, 2))
seconds = st.floats(0, 1e4, allow_nan=False).map(lambda x: round(x, 6))


@st.composite
def samples(draw: st.DrawFn) -> SampleMeta:
    objects = draw(
        st.lists(
            st.builds(
                DetectedObject, names, st.floats(0, 1), st.tuples(degrees, degrees), degrees, seconds, names
            ),
            max_size=3,
        )
    )
    rows = st.lists(st.lists(st.floats(-180, 180, allow_nan=False), min_size=5, max_size=6), max_size=3)
    return SampleMeta(
        key=draw(names),
        source=draw(names),
        start_s=draw(seconds),
        duration_s=draw(seconds),
        fps=draw(st.integers(1, 120)),
        video=VideoStream(draw(st.integers(2, 8192)), draw(st.integers(1, 4096)), draw(names)),
        audio=AudioStream(draw(st.integers(8000, 96000)), draw(st.sampled_from(["ambix", "fuma"]))),
        objects=tuple(objects),
        detector=draw(names),
        labels=draw(st.none() | rows),
        dataset=draw(st.none() | st.builds(DatasetOrigin, names, names, names, st.integers(-1, 9))),
    )


@given(samples())
def test_sample_json_round_trips(meta: SampleMeta) -> None:
    assert SampleMeta.from_json(meta.to_json()) == meta
    written = json.loads(meta.to_json())
    assert written["schema_version"] == SCHEMA_VERSION
    # "no labels" (unlabelled) is the key's absence, never null: it is not "labelled silent" ([])
    assert ("labels" in written) == (meta.labels is not None)


@given(st.floats(-math.pi, math.pi), st.floats(-math.pi / 2, math.pi / 2))
def test_directions_are_written_in_degrees_to_a_hundredth(azimuth: float, elevation: float) -> None:
    az, el = direction_deg(azimuth, elevation)
    assert az == pytest.approx(math.degrees(azimuth), abs=0.005 + 1e-9)
    assert el == pytest.approx(math.degrees(elevation), abs=0.005 + 1e-9)


def test_manifest_round_trips_with_its_totals() -> None:
    original = sample_manifest()
    assert Manifest.from_json(original.to_json()) == original
    assert json.loads(original.to_json()) == original.to_dict()  # the JSON written is the dict
    assert original.to_dict()["totals"] == {
        "inputs": 2,
        "accepted": 1,
        "rejected": 1,
        "shards": 1,
        "samples": 2,
        "bytes": 4096,
    }
    rejected = original.to_dict()["inputs"]["in/b.mp4"]
    assert "duration_s" not in rejected and "error" not in rejected and rejected["reason"]


def plain_sample() -> bytes:
    """The JSON of a sample with one detected object, no labels."""
    return SampleMeta(
        "k_c00000",
        "in/a.mp4",
        0.0,
        1.0,
        16,
        VideoStream(256, 128, "vp9"),
        AudioStream(24000, "ambix"),
        (DetectedObject("person", 0.9, (10.0, 5.0), 20.0, 0.5, "hog"),),
        "builtin",
    ).to_json()


def test_a_version_1_sample_migrates_leaving_sounds_behind() -> None:
    sounds = [{"direction": [10.0, 0.0], "time_s": 0.0, "level_db": 0.0}]  # as version 1 wrote them
    old = json.loads(plain_sample()) | {"schema_version": 1, "sounds": sounds}
    meta = SampleMeta.from_json(json.dumps(old))
    assert meta == SampleMeta.from_json(plain_sample())
    assert "sounds" not in json.loads(meta.to_json())


def test_a_version_1_manifest_without_layout_migrates_to_files() -> None:
    old = sample_manifest().to_dict()
    old["schema_version"] = 1
    del old["settings"]["layout"]  # written before dataset layouts existed
    migrated = Manifest.from_json(json.dumps(old))
    assert migrated.settings.layout == "files" and migrated.written_with == 1
    assert migrated.shards == sample_manifest().shards
    for later in ("probe_seconds", "shard_cpu_seconds", "shards_by_node", "shards_given_out_again"):
        del old["run"][later]  # and the bookkeeping of runs before these were recorded
    del old["shards"]["shard-000000"]["node"]
    earliest = Manifest.from_json(json.dumps(old))
    assert earliest.run == RunInfo(1.0, 2.0, 2, shards={"written": 1})
    assert earliest.shards["shard-000000"].node == "" and earliest.totals() == sample_manifest().totals()
    assert json.loads(migrated.to_json())["schema_version"] == SCHEMA_VERSION  # rewritten in this one


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 0, None, "2"])
def test_a_sample_of_another_version_is_refused_naming_it_and_the_fix(version: object) -> None:
    data = json.loads(plain_sample()) | {"schema_version": version}
    if version is None:
        del data["schema_version"]
    with pytest.raises(
        SchemaError, match=r"k_c00000\.json in s3://b/shard-000000\.tar: schema_version"
    ) as err:
        SampleMeta.from_json(json.dumps(data), "k_c00000.json in s3://b/shard-000000.tar")
    message = str(err.value)
    assert f"expected {SCHEMA_VERSION}" in message and repr(version) in message
    if version == SCHEMA_VERSION + 1:
        assert "newer avsa" in message and "--output NEW" in message
    else:
        assert "re-run `avsa preprocess --input SOURCE --output URL` to rewrite it" in message


def test_a_newer_manifest_is_refused_by_the_loaders_listing(tmp_path: Path) -> None:
    data = sample_manifest().to_dict() | {"schema_version": SCHEMA_VERSION + 1}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(SchemaError, match=rf"{MANIFEST_NAME}: schema_version {SCHEMA_VERSION + 1}, expected"):
        list_shards(str(tmp_path))
    with pytest.raises(SchemaError, match="newer avsa"):
        read_manifest(str(tmp_path))


def test_an_unversioned_manifest_is_refused_with_the_command_that_rewrites_it(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"shards": {}}))
    with pytest.raises(SchemaError, match=r"schema_version None, expected .*re-run `avsa preprocess"):
        read_manifest(str(tmp_path))


def test_an_eval_set_manifest_has_its_own_version_and_names_its_own_tool(tmp_path: Path) -> None:
    from dataloading.synth.evalsets import EVALSET_SCHEMA_VERSION
    from evaluation.datasets import read_evalset_manifest

    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"kind": "doa", "splits": {}}))  # no version
    with pytest.raises(
        SchemaError, match=r"schema_version None, expected 1; re-run `avsa synth --eval-sets`"
    ):
        read_evalset_manifest(str(tmp_path))
    (tmp_path / MANIFEST_NAME).write_text(
        json.dumps({"schema_version": EVALSET_SCHEMA_VERSION, "splits": {}})
    )
    assert read_evalset_manifest(str(tmp_path))["splits"] == {}
