"""Latency measured so that machine noise cancels: the FP32 model and the candidate are timed in
the same process, with the same runner and session options, after warm-ups, interleaved in
pairs whose order is shuffled (seeded), so a burst of load from elsewhere slows both members of
a pair alike. What is reported is the candidate's p50/p90, FP32's p50, and the median of the
per-pair ratios candidate/FP32 with its p10 and p90 (the spread: how much noise was left).

Two timing phases never share a host at the same time: each holds an exclusive `fcntl.flock` on
one lock file for the whole host (`DEFAULT_LATENCY_LOCK`, or `--latency-lock PATH` on agents
and `coordinator tune`), while accuracy inference and model loading run outside it."""
from __future__ import annotations

import argparse
import fcntl
import math
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from shared.errors import EvaluationError, InvalidArgument
from shared.feeds import BATCHED, Feeds, feed_at
from shared.runners.base import Runner, Timer, timers_of

DEFAULT_LATENCY_LOCK = Path(tempfile.gettempdir()) / "qfarm-latency.lock"
WARMUP_RUNS = 5            # per model, interleaved too, before any pair is timed


@dataclass(frozen=True)
class LatencyStats:
    ms_p50: float                 # the candidate, batch 1
    ms_p90: float
    fp32_ms_p50: float            # the FP32 model, timed alongside
    fp32_ms_p90: float
    ratio_p50: float | None       # median over pairs of candidate time / FP32 time
    ratio_p10: float | None
    ratio_p90: float | None
    pairs: int


@contextmanager
def host_lock(path: Path | None) -> Iterator[None]:
    """Hold the host-wide timing lock (None: no lock). Opened read-only, so agents of different
    users share one lock file; flock is released by the kernel if the holder dies."""
    if path is None:
        yield
        return
    fd = open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def open_lock(path: Path) -> int:
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        raise InvalidArgument(f"--latency-lock {path}: cannot open the lock file ({exc.strerror})") from exc


def check_lock_path(path: Path | None) -> Path | None:
    """Usable now (agents and `coordinator tune` check it at start)."""
    if path is not None:
        os.close(open_lock(Path(path)))
    return None if path is None else Path(path)


def add_lock_arguments(parser: argparse.ArgumentParser) -> None:
    """--latency-lock PATH / --no-latency-lock, for agents and `coordinator tune` alike."""
    parser.add_argument("--latency-lock", type=Path, default=DEFAULT_LATENCY_LOCK, metavar="PATH",
                        help="lock file shared by every qfarm process of this host that times models (agents and "
                             "local tunes), so that two latency measurements never overlap "
                             f"(default {DEFAULT_LATENCY_LOCK})")
    parser.add_argument("--no-latency-lock", dest="latency_lock", action="store_const", const=None,
                        help="time without the host-wide lock (only where nothing else measures on this host)")


def _times(timer: Timer, n: int, which: str) -> list[float]:
    got = [float(t) for t in timer(n)]
    if len(got) != n or not all(math.isfinite(t) and t >= 0 for t in got):
        raise EvaluationError(f"the {which} timer returned {got[:4]} for {n} run(s); expected {n} seconds >= 0")
    return got


def interleaved_latency(runner: Runner, fp32_model: Path, model: Path, sample: Feeds, runs: int, *,
                        warmup: int = WARMUP_RUNS, seed: int = 0, lock: Path | None = None,
                        layout: str = BATCHED) -> LatencyStats | None:
    """Time `model` against `fp32_model` in `runs` pairs (None when runs is 0) on the first sample
    of `sample`: batch 1, or its one whole feed (`layout`); see the module doc."""
    if runs <= 0:
        return None
    one = feed_at(sample, 0, layout)
    rng = np.random.default_rng(seed)
    with timers_of(runner, [Path(fp32_model), Path(model)], one, layout) as (fp32_timer, timer):
        with host_lock(lock):
            for _ in range(warmup):
                _times(fp32_timer, 1, "FP32")
                _times(timer, 1, "candidate")
            pairs = []
            for _ in range(runs):
                if rng.random() < 0.5:
                    ref = _times(fp32_timer, 1, "FP32")[0]
                    cand = _times(timer, 1, "candidate")[0]
                else:
                    cand = _times(timer, 1, "candidate")[0]
                    ref = _times(fp32_timer, 1, "FP32")[0]
                pairs.append((ref, cand))
    return latency_stats(pairs)


def latency_stats(pairs: Sequence[tuple[float, float]]) -> LatencyStats:
    """Percentiles (ms) of both series and of the per-pair ratios (pairs with an FP32 time of 0 have none)."""
    ref = np.asarray([p[0] for p in pairs]) * 1000.0
    cand = np.asarray([p[1] for p in pairs]) * 1000.0
    ratios = np.asarray([c / r for r, c in pairs if r > 0])
    ratio = [None] * 3 if not len(ratios) else [float(np.percentile(ratios, q)) for q in (50, 10, 90)]
    return LatencyStats(ms_p50=float(np.percentile(cand, 50)), ms_p90=float(np.percentile(cand, 90)),
                        fp32_ms_p50=float(np.percentile(ref, 50)), fp32_ms_p90=float(np.percentile(ref, 90)),
                        ratio_p50=ratio[0], ratio_p10=ratio[1], ratio_p90=ratio[2], pairs=len(pairs))
