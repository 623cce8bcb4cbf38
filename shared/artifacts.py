"""Content-addressed artifact files (models, input sets, FP32 outputs) named by their sha256.

Used by the coordinator (its data dir) and by agents (their work-dir cache) alike. Writes go to
a temp file and are renamed into place only once the bytes hash to the declared sha256, so a
crash or a bad transfer never leaves a wrong file under a good name; reads verify again, so a
file corrupted on disk is detected (and can be fetched again) instead of silently used."""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from shared.atomic import publish
from shared.errors import InvalidArgument, NotFound
from shared.hashing import sha256_bytes, sha256_file  # noqa: F401  (re-exported for the farm)

CHUNK_BYTES = 1 << 20
_SHA = re.compile(r"^[0-9a-f]{64}$")


class CorruptArtifact(InvalidArgument):
    """The bytes do not hash to the declared sha256."""

    step = "artifact"


@dataclass(frozen=True)
class StoredArtifact:
    sha256: str
    size_bytes: int
    path: Path


def check_sha(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA.match(sha256):
        raise InvalidArgument(f"artifact sha256 {sha256!r} is not 64 lowercase hex digits", step="artifact")
    return sha256


class ArtifactStore:
    """A directory of files `<root>/<sha[:2]>/<sha>`; safe for concurrent writers of the same sha."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(exist_ok=True)

    def path_of(self, sha256: str) -> Path:
        check_sha(sha256)
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path_of(sha256).is_file()

    def get(self, sha256: str, *, verify: bool = True) -> StoredArtifact:
        """The stored file, re-hashed when `verify`; a corrupted file is removed and reported."""
        path = self.path_of(sha256)
        if not path.is_file():
            raise NotFound(f"artifact {sha256} is not stored", step="artifact")
        if verify:
            actual = sha256_file(path)
            if actual != sha256:
                path.unlink(missing_ok=True)
                raise CorruptArtifact(f"stored artifact {sha256} hashes to {actual}: removed")
        return StoredArtifact(sha256, path.stat().st_size, path)

    def put_file(self, source: Path) -> StoredArtifact:
        """Copy a file in (the source is never moved or changed)."""
        with open(source, "rb") as fh:
            return self.put_stream(iter(lambda: fh.read(CHUNK_BYTES), b""))

    def put_bytes(self, data: bytes, expected_sha256: str | None = None) -> StoredArtifact:
        return self.put_stream([data], expected_sha256)

    def put_stream(self, chunks: Iterable[bytes], expected_sha256: str | None = None,
                   max_bytes: int | None = None) -> StoredArtifact:
        """Write chunks to a temp file, hash as they come, rename into place if the hash matches."""
        writer = self.writer(expected_sha256, max_bytes)
        try:
            for chunk in chunks:
                writer.write(chunk)
            return writer.commit()
        finally:
            writer.abort()

    def writer(self, expected_sha256: str | None = None, max_bytes: int | None = None) -> "ArtifactWriter":
        """An artifact written piece by piece (e.g. as an upload's chunks arrive); `commit` keeps it."""
        if expected_sha256 is not None:
            check_sha(expected_sha256)
        return ArtifactWriter(self, expected_sha256, max_bytes)

    def chunks(self, sha256: str, offset: int = 0, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, bytes]]:
        """(offset, bytes) pieces of a verified artifact, from `offset`."""
        stored = self.get(sha256)
        if offset < 0 or offset > stored.size_bytes:
            raise InvalidArgument(f"offset {offset} is outside artifact {sha256} of {stored.size_bytes} bytes",
                                  step="artifact")
        yield from iter_file_chunks(stored.path, offset, chunk_bytes)


class ArtifactWriter:
    """One artifact being written: bytes go to a temp file and a running hash; `commit` renames the
    file into place only if the hash matches, `abort` (also safe after commit) leaves nothing. Each
    step holds a lock, so an abort from another thread waits for a write in progress."""

    def __init__(self, store: ArtifactStore, expected_sha256: str | None, max_bytes: int | None):
        self._lock = threading.Lock()
        self._store = store
        self._expected = expected_sha256
        self._max_bytes = max_bytes
        self._digest = hashlib.sha256()
        self.size = 0
        fd, tmp_name = tempfile.mkstemp(dir=store._tmp, prefix="part-")
        self._tmp = Path(tmp_name)
        self._out = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        with self._lock:
            self.size += len(chunk)
            if self._max_bytes is not None and self.size > self._max_bytes:
                raise InvalidArgument(f"artifact exceeds {self._max_bytes} bytes", step="artifact")
            self._digest.update(chunk)
            self._out.write(chunk)

    def commit(self) -> StoredArtifact:
        with self._lock:
            self._out.close()
            sha = self._digest.hexdigest()
            if self._expected is not None and sha != self._expected:
                raise CorruptArtifact(f"received {self.size} bytes hashing to {sha}, expected {self._expected}")
            final = publish(self._tmp, self._store.path_of(sha))   # a concurrent writer of this sha: same bytes
            return StoredArtifact(sha, self.size, final)

    def abort(self) -> None:
        with self._lock:
            self._out.close()
            self._tmp.unlink(missing_ok=True)


def iter_file_chunks(path: Path, offset: int = 0, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as fh:
        fh.seek(offset)
        pos = offset
        while True:
            data = fh.read(chunk_bytes)
            if not data:
                return
            yield pos, data
            pos += len(data)

