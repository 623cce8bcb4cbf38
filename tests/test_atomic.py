"""Write-then-rename (shared/atomic.py): a reader sees the old content or the new, never a torn
one; a failed write leaves the old content and no temp file."""
from __future__ import annotations

import numpy as np
import pytest

from shared.atomic import atomic_output, atomic_write_text, link_or_copy, publish


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "sub" / "report.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old" and [p.name for p in target.parent.iterdir()] == ["report.json"]


def test_the_temp_path_keeps_the_suffix_and_folders_replace_folders(tmp_path):
    with atomic_output(tmp_path / "fp32.npy") as tmp:
        assert tmp.suffix == ".npy" and tmp.parent == tmp_path
        np.save(tmp, np.arange(3))                      # np.save would append .npy to any other name
    assert np.load(tmp_path / "fp32.npy").tolist() == [0, 1, 2]
    out = tmp_path / "report"
    for text in ("first", "second"):
        with atomic_output(out) as staging:
            staging.mkdir()
            (staging / "report.json").write_text(text)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32.npy", "report"]
    assert (out / "report.json").read_text() == "second"


def test_publish_and_link_or_copy(tmp_path):
    source = tmp_path / "a"
    source.write_bytes(b"bytes")
    link_or_copy(source, tmp_path / "b")
    assert publish(tmp_path / "b", tmp_path / "c" / "d").read_bytes() == b"bytes" and not (tmp_path / "b").exists()
