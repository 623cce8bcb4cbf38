"""Measurements in their own process: `python -m agent.child --serve` (the agent's long-lived
worker, one per slot) or `python -m agent.child REQUEST.json` (one job, for debugging).

A runtime that segfaults, aborts or hangs takes down only this process; the agent sees the exit
status, reports a crash, and starts a fresh worker for the next job. A warm worker keeps the
runtime imported (and its caches) between jobs, so small jobs are not dominated by start-up.
A request names local files (already fetched and verified by the agent); the outcome is written
to `<out>/result.json` (and, for a reference job, the FP32 outputs to `<out>/fp32.npz`).
In serve mode the request paths arrive one per line on stdin and each finished job is answered
by one line on the original stdout; everything else the process prints goes to stderr.
`--memory-mb N` caps the worker's address space (RLIMIT_AS) before it takes jobs (shared/child.py);
a job that runs out of it (MemoryError, a failed runtime allocation) is a crash with cause `oom`."""
from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from shared.atomic import atomic_output, atomic_write_text
from shared.child import die_with_parent, serve_main
from shared.results import CrashCause, CrashKind, DeviceResult


def run(request: dict) -> DeviceResult:
    from agent.runtimes import RuntimeOptions, make_runner
    from shared.evaluate import EvalSpec, evaluate_model, reference_result
    from shared.errors import QfarmError
    from shared.feeds import load_npz, npz_bytes
    from shared.metrics import MetricError
    from shared.runners.base import UnsupportedModel, run_outputs

    out = Path(request["out"])
    model = Path(request["model"])
    try:
        runner = make_runner(RuntimeOptions.from_dict(request["runtime"]))
        spec = EvalSpec.from_dict(request["eval"])
        feeds = load_npz(Path(request["inputs"]), "the job's inputs")
        labels = np.load(request["labels"]) if request.get("labels") else None
        if request["reference"]:
            start = time.perf_counter()
            outputs = run_outputs(runner, model, feeds, spec.layout)
            with atomic_output(out / "fp32.npz") as tmp:
                tmp.write_bytes(npz_bytes(outputs))
            return reference_result(runner, model, outputs, feeds, labels, spec, start)
        reference = load_npz(Path(request["fp32_outputs"]), "the FP32 reference outputs")
        return evaluate_model(runner, model, Path(request["fp32_model"]), feeds, reference, labels, spec)
    except UnsupportedModel as exc:
        return DeviceResult.failure(CrashCause(CrashKind.ERROR, exc.args[0]), model.stat().st_size, unsupported=True)
    except MetricError as exc:
        return DeviceResult.failure(CrashCause(CrashKind.METRIC, exc.args[0]), model.stat().st_size)
    except QfarmError as exc:
        return DeviceResult.failure(_cause(exc, exc.args[0]), model.stat().st_size)


def _cause(exc: BaseException, message: str) -> CrashCause:
    """`oom` when the job ran out of memory (the message goes to stderr), else an error."""
    cause = CrashCause.from_exception(exc, message)
    if cause.kind == CrashKind.OOM:
        print(f"out of memory: {message}", file=sys.stderr)
    return cause


def answer(request_path: Path) -> None:
    """Run one request file and write its result.json (atomically)."""
    request = json.loads(Path(request_path).read_text())
    try:
        result = run(request)
    except Exception as exc:  # noqa: BLE001 - any runtime failure is this job's crash, not the worker's
        traceback.print_exc()
        result = DeviceResult.failure(_cause(exc, f"{type(exc).__name__}: {exc}"))
    atomic_write_text(Path(request["out"]) / "result.json", json.dumps(result.to_json()))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    served = serve_main(args, answer)
    if served is not None:
        return served
    die_with_parent(os.getppid())
    answer(Path(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
