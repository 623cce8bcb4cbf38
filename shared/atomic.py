"""Write-then-rename, the one way qfarm replaces a file (or a folder) that others may read: a
reader sees the old content or the new, never a torn one, and a crash leaves at most a hidden
temp file behind.

    with atomic_output(path) as tmp:      # tmp keeps path's suffix: np.save / onnx.save see ".npy"/".onnx"
        np.save(tmp, array)
    atomic_write_text(path, text)
    publish(tmp, final)                   # a temp file written elsewhere (named by content once hashed)"""
from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def publish(tmp: Path, target: Path, *, fsync: bool = True) -> Path:
    """Rename `tmp` onto `target` (its folder created); files are flushed to disk first. A folder
    replaces an existing folder (removed first: readers of a folder see it missing briefly)."""
    tmp, target = Path(tmp), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if tmp.is_dir():
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
    elif fsync:
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, target)
    return target


@contextmanager
def atomic_output(target: Path, *, fsync: bool = True) -> Iterator[Path]:
    """A temp path beside `target` to write (a file, or a folder the block creates); renamed onto
    `target` when the block ends, removed if it raises. Concurrent writers each get their own."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{target.suffix}")
    try:
        yield tmp
        publish(tmp, target, fsync=fsync)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link (no bytes copied) where the file system allows one, else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
