"""The coordinator's build pool (coordinator/buildpool.py) and what the tuner builds with it
(coordinator/tuner/builder.py): memory and time limits per task, typed errors across the process
boundary, deterministic builds whichever process builds them, and builds ahead of need."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from coordinator.buildpool import BuildCrashed, BuildLimits, BuildPool
from coordinator.data import Preprocess
from coordinator.quantize import build_candidate
from coordinator.tuner.builder import CandidateBuilder
from coordinator.tuner.config import TuneConfig
from coordinator.tuner.workspace import open_workspace
from shared.errors import DataError, InvalidArgument, QfarmError
from shared.hashing import sha256_file
from shared.results import CrashKind
from shared.settings import QuantSettings
from tests.farm_support import wait_for
from tests.models import make_classifier

LIMIT_MB = 768     # a build worker with onnxruntime imported uses ~250 MB of address space


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    with BuildPool(BuildLimits(workers=2, memory_mb=LIMIT_MB, timeout_s=60),
                   tmp_path_factory.mktemp("pool")) as p:
        yield p


def test_a_task_over_the_memory_limit_is_oom_and_the_pool_keeps_serving(tmp_path):
    with BuildPool(BuildLimits(workers=1, memory_mb=LIMIT_MB, timeout_s=60), tmp_path / "p") as one:
        worker = one.call("tests.build_tasks:pid", what="a small task")
        assert one.call("tests.build_tasks:allocate", 64, what="a small task") == 64 << 18
        with pytest.raises(BuildCrashed) as caught:
            one.call("tests.build_tasks:allocate", 2048, what="a 2 GB task")
        assert caught.value.cause.kind == CrashKind.OOM
        assert "a 2 GB task failed in a build worker: crash oom" in str(caught.value)
        assert "--build-memory-mb 768" in str(caught.value)
        # the worker that ran out of memory exited and was replaced; the pool goes on
        assert one.call("tests.build_tasks:allocate", 64, what="a small task") == 64 << 18
        assert one.call("tests.build_tasks:pid", what="a small task") != worker


def test_typed_errors_and_crashes_cross_the_process_boundary(pool):
    with pytest.raises(DataError, match="no such images"):
        pool.call("tests.build_tasks:fail", "DataError", "no such images", what="a failing task")
    with pytest.raises(InvalidArgument) as caught:
        pool.call("tests.build_tasks:fail", "InvalidArgument", "bad value 7", what="a failing task")
    assert caught.value.step == "test"
    with pytest.raises(BuildCrashed) as crashed:
        pool.call("tests.build_tasks:segfault", what="a segfaulting task")
    assert crashed.value.cause.kind == CrashKind.SIGNAL and crashed.value.cause.detail == "SIGSEGV"
    assert pool.call("tests.build_tasks:sleep", 0.01, what="the next task") == 0.01


def test_a_task_past_the_timeout_is_killed(tmp_path):
    with BuildPool(BuildLimits(workers=1, memory_mb=LIMIT_MB, timeout_s=1.5), tmp_path / "p") as short:
        started = time.monotonic()
        with pytest.raises(BuildCrashed) as caught:
            short.call("tests.build_tasks:sleep", 60, what="a hanging build")
        assert caught.value.cause.kind == CrashKind.TIMEOUT
        assert "--build-timeout-s 1.5" in str(caught.value)
        assert time.monotonic() - started < 30
        assert short.call("tests.build_tasks:sleep", 0, what="the next task") == 0


def test_limits_are_checked_by_name():
    for bad, needle in (({"workers": -1}, "--build-workers"), ({"memory_mb": 100}, "--build-memory-mb"),
                        ({"timeout_s": float("nan")}, "--build-timeout-s"), ({"timeout_s": 0}, "--build-timeout-s")):
        with pytest.raises(InvalidArgument, match=needle):
            BuildLimits(**bad)


def _workspace(tmp_path: Path, images_dir: Path, out: Path, pool: BuildPool):
    model = tmp_path / "model.onnx"
    if not model.exists():
        make_classifier(model, channels=(8, 16, 16, 16))
    config = TuneConfig(model=model, images=images_dir, out=out, preprocess=Preprocess(input_size=32),
                        n_calibration=8, n_eval=8, settings=QuantSettings(calibration_images=8))
    return open_workspace(config, pool)


def test_builds_are_deterministic_whichever_process_builds_them(tmp_path, images_dir, pool):
    """The same candidate id gives the same bytes: built by two workers at once with ranges a
    calibration task cached, built in this process from its own calibration, and rebuilt by
    another worker later."""
    ws = _workspace(tmp_path, images_dir, tmp_path / "a", pool)
    nodes = [n for n, op in zip(ws.prepared.node_names, ws.prepared.op_types) if op in ("Conv", "Gemm")]
    settings = QuantSettings(calibration_images=8)
    specs = [_spec(ws, settings, ()), _spec(ws, settings, nodes[:1]), _spec(ws, settings, nodes[:2]),
             _spec(ws, settings, nodes[1:3]), _spec(ws, settings.replace(per_channel=False), nodes[:1])]
    pooled = {spec.id: cand.sha256 for spec, cand in CandidateBuilder(pool, ws, tmp_path / "a").build_ahead(specs)}
    assert len(set(pooled.values())) == len(specs)

    inline = CandidateBuilder(BuildPool(BuildLimits(workers=0)), ws, tmp_path / "b")   # fresh calibration here
    assert {spec.id: cand.sha256 for spec, cand in inline.build_ahead(specs)} == pooled

    for path in (tmp_path / "a" / "candidates").glob("*.onnx"):
        path.unlink()
    again = {spec.id: getattr(cand, "sha256", cand) for spec, cand in CandidateBuilder(pool, ws, tmp_path / "a").build_ahead(
        reversed(specs))}
    print(again)
    assert again == pooled
    # the plain in-process path (ranges computed and used in one go, no cache) agrees too
    direct = build_candidate(ws.prepared, specs[2], tmp_path / "c", ws.calibration, tmp_path / "c-cache")
    assert direct.sha256 == pooled[specs[2].id] == sha256_file(direct.path)


def _spec(ws, settings, excluded):
    from coordinator.quantize import spec_for

    return spec_for(ws.prepared, settings, excluded, calibration_digest=ws.calibration_digest)


def test_candidates_are_built_ahead_of_the_consumer(tmp_path, images_dir, pool):
    """While the caller handles candidate 1 (the farm: queues its jobs), the next ones build."""
    ws = _workspace(tmp_path, images_dir, tmp_path / "out", pool)
    nodes = [n for n, op in zip(ws.prepared.node_names, ws.prepared.op_types) if op == "Conv"]
    specs = [_spec(ws, QuantSettings(calibration_images=8), nodes[:k]) for k in range(4)]
    builder = CandidateBuilder(pool, ws, tmp_path / "out", lookahead=3)
    builds = builder.build_ahead(specs)
    first_spec, first = next(builds)
    assert first_spec == specs[0] and first.path.is_file()
    folder = tmp_path / "out" / "candidates"
    wait_for(lambda: all((folder / f"{s.id}.onnx").is_file() for s in specs[1:3]), 60,
             "the next two candidates built before they were asked for")
    assert [spec.id for spec, _ in builds] == [s.id for s in specs[1:]]     # handed back in the order asked
    assert builder.built == 4


def test_a_failed_build_is_that_candidates_outcome(tmp_path, images_dir, pool):
    ws = _workspace(tmp_path, images_dir, tmp_path / "out", pool)
    from coordinator.quantize import spec_for

    good = _spec(ws, QuantSettings(calibration_images=8), ())
    conv = next(n for n, op in zip(ws.prepared.node_names, ws.prepared.op_types) if op == "Conv")
    bad = spec_for(ws.prepared, QuantSettings(calibration_images=8, format="qoperator"), (), int16_nodes=[conv],
                   calibration_digest=ws.calibration_digest)
    outcomes = dict((spec.id, outcome) for spec, outcome in
                    CandidateBuilder(pool, ws, tmp_path / "out").build_ahead([bad, good]))
    assert isinstance(outcomes[bad.id], QfarmError) and "need --format qdq" in str(outcomes[bad.id])
    assert outcomes[good.id].path.is_file()
