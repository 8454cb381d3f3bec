"""Dataset layouts: STARSS23 and YT-360 trees listed, paired by stem, and every file accounted for."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataloading.layouts import MIC_REFUSED, LayoutError, listing


def touch(root: Path, *relatives: str) -> None:
    for relative in relatives:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_starss23_pairs_by_stem_and_keeps_split_fold_room(tmp_path: Path) -> None:
    touch(
        tmp_path,
        "foa_dev/dev-train-sony/fold3_room21_mix001.wav",
        "video_dev/dev-train-sony/fold3_room21_mix001.mp4",
        "metadata_dev/dev-train-sony/fold3_room21_mix001.csv",
        "foa_dev/dev-test-tau/fold4_room2_mix010.wav",
        "metadata_dev/dev-test-tau/fold4_room2_mix010.csv",  # no video
        "mic_dev/dev-train-sony/fold3_room21_mix001.wav",
        "foa_dev/dev-train-sony/notes.wav",
    )
    found = listing("starss23", str(tmp_path))
    usable = found.usable()
    assert [r.stem for r in usable] == ["dev-train-sony/fold3_room21_mix001"]
    assert (usable[0].split, usable[0].fold, usable[0].room) == ("dev-train", 3, 21)
    assert usable[0].labels and usable[0].labels.endswith("fold3_room21_mix001.csv")
    # SELD needs no video: the test recording is usable for it
    assert [r.split for r in found.usable(("audio", "labels"))] == ["dev-test", "dev-train"]
    rejected = found.rejected()
    assert rejected[str(tmp_path / "mic_dev/dev-train-sony/fold3_room21_mix001.wav")] == MIC_REFUSED
    assert "no video" in rejected[str(tmp_path / "foa_dev/dev-test-tau/fold4_room2_mix010.wav")]
    assert "foldF_roomR_mixNNN" in rejected[str(tmp_path / "foa_dev/dev-train-sony/notes.wav")]
    # every file found is either usable or rejected with a reason
    usable_files = {u for r in usable for u in (r.video, r.audio, r.labels)}
    assert usable_files | rejected.keys() == {str(p) for p in tmp_path.rglob("*") if p.is_file()}


def test_yt360_splits_and_segments(tmp_path: Path) -> None:
    touch(
        tmp_path,
        "video/abc_DEF-123-30.mp4",
        "audio/abc_DEF-123-30.m4a",
        "video/zzzzzzzzzzz-0.mp4",
        "audio/zzzzzzzzzzz-0.m4a",
        "video/unlisted0000-5.mp4",
        "audio/unlisted0000-5.m4a",
    )
    (tmp_path / "train.txt").write_text("abc_DEF-123\nunlisted0000\n")
    (tmp_path / "test.txt").write_text("zzzzzzzzzzz\n")
    (tmp_path / "segments.txt").write_text("abc_DEF-123 30,40\nzzzzzzzzzzz 0\n")
    found = listing("yt360", str(tmp_path))
    usable = {(r.stem, r.split) for r in found.usable()}
    assert usable == {("abc_DEF-123-30", "train"), ("zzzzzzzzzzz-0", "test")}
    rejected = found.rejected()
    assert "not listed in segments.txt" in rejected[str(tmp_path / "video/unlisted0000-5.mp4")]
    assert "neither video/ nor audio/" in rejected["abc_DEF-123-40"]


def test_a_folder_without_the_layout_is_refused_with_what_is_missing(tmp_path: Path) -> None:
    touch(tmp_path, "clips/a.mp4")
    with pytest.raises(LayoutError, match="foa_dev"):
        listing("starss23", str(tmp_path))
    with pytest.raises(LayoutError, match="video/"):
        listing("yt360", str(tmp_path))
