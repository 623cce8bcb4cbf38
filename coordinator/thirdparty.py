"""Log records of other libraries (onnxruntime's quantizer warns on the root logger, once per
candidate it builds) go to a file in the output folder instead of the terminal; the console gets
one summary line with their count. qfarm's own loggers still reach the terminal."""
from __future__ import annotations

import logging
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

OWN_LOGGERS = ("coordinator", "agent", "shared")
LOG_NAME = "third-party.log"


def _ours(record: logging.LogRecord) -> bool:
    return record.name.split(".", 1)[0] in OWN_LOGGERS


class _Divert(logging.Handler):
    """Writes other libraries' records to the file (opened on the first one) and counts them."""

    def __init__(self, path: Path):
        super().__init__(logging.DEBUG)
        self.path = path
        self.counts: Counter[str] = Counter()
        self._file: logging.FileHandler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if _ours(record):
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = logging.FileHandler(self.path, encoding="utf-8")
            self._file.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        self._file.emit(record)
        self.counts[f"{record.name} {record.levelname}"] += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


class Diverted:
    def __init__(self, handler: _Divert):
        self._handler = handler

    @property
    def count(self) -> int:
        return sum(self._handler.counts.values())

    @property
    def path(self) -> Path:
        return self._handler.path

    def summary(self) -> str:
        kinds = ", ".join(f"{n} {what}" for what, n in self._handler.counts.most_common(3))
        return f"{self.count} messages from other libraries ({kinds}) are in {self.path}"


@contextmanager
def divert_third_party(out_dir: Path) -> Iterator[Diverted]:
    """While active: other libraries' records (and Python warnings) go to OUT_DIR/third-party.log,
    not to the terminal handlers already installed on the root logger."""
    root = logging.getLogger()
    handler = _Divert(Path(out_dir) / LOG_NAME)
    keep_ours = logging.Filter()
    keep_ours.filter = _ours    # type: ignore[method-assign]
    terminals = list(root.handlers)
    for h in terminals:
        h.addFilter(keep_ours)
    root.addHandler(handler)
    logging.captureWarnings(True)
    try:
        yield Diverted(handler)
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        for h in terminals:
            h.removeFilter(keep_ours)
        handler.close()
