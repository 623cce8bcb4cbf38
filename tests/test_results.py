"""The typed device result: one conversion each way for the wire, result.json and report.json,
and report entries with exactly the keys and values earlier versions wrote."""
from __future__ import annotations

import dataclasses

import pytest

from shared.pb.qfarm.v1 import job_pb2
from shared.metrics import OutputFidelity
from shared.results import CrashCause, CrashKind, DeviceResult, ResultStatus
from shared.runners.base import RunnerInfo

RUNTIME = RunnerInfo("onnxruntime", "1.32.0", ("CPUExecutionProvider",), "graph_optimization=all threads=1")
OK = DeviceResult(ResultStatus.OK, top1_agreement=0.75, top5_agreement=1.0, top1_accuracy=0.5, size_bytes=1234,
                  latency_ms_p50=1.5, latency_ms_p90=2.5, num_images=16, wall_seconds=0.12345, runtime=RUNTIME)


@pytest.mark.parametrize("text, kind, detail", [
    ("signal:SIGSEGV", CrashKind.SIGNAL, "SIGSEGV"), ("oom", CrashKind.OOM, ""), ("timeout", CrashKind.TIMEOUT, ""),
    ("error:exit 1: boom: again", CrashKind.ERROR, "exit 1: boom: again"), ("cancelled", CrashKind.CANCELLED, ""),
    ("lost:5 leases ended without a result (last: lease expired)", CrashKind.LOST,
     "5 leases ended without a result (last: lease expired)"),
    ("build:quantize: no calibration data", CrashKind.BUILD, "quantize: no calibration data"),
    ("not measured", CrashKind.NOT_MEASURED, ""),
    ("not measured: budget of 3 evaluations spent", CrashKind.NOT_MEASURED, "budget of 3 evaluations spent"),
    ("something an old agent wrote", CrashKind.ERROR, "something an old agent wrote")])
def test_crash_causes_read_back_what_they_write(text, kind, detail):
    cause = CrashCause.parse(text)
    assert (cause.kind, cause.detail) == (kind, detail)
    if kind != CrashKind.ERROR or text.startswith("error:"):
        assert str(cause) == text


def test_only_device_failures_are_blameable():
    assert {k for k in CrashKind if CrashCause(k).blameable} == {
        CrashKind.ERROR, CrashKind.OOM, CrashKind.SIGNAL, CrashKind.TIMEOUT, CrashKind.CANCELLED}
    assert DeviceResult.failure(CrashCause(CrashKind.SIGNAL, "SIGABRT")).blameable
    assert DeviceResult(ResultStatus.UNSUPPORTED).blameable           # no cause given: still the device's
    assert not DeviceResult.failure(CrashCause(CrashKind.LOST, "5 leases")).blameable
    assert not OK.blameable
    assert CrashCause.from_exception(MemoryError()).kind == CrashKind.OOM
    assert CrashCause.from_exception(RuntimeError("x"), "std::bad_alloc") == CrashCause(CrashKind.OOM)
    assert CrashCause.from_exception(RuntimeError("bad op")) == CrashCause(CrashKind.ERROR, "bad op")


def test_every_field_has_a_wire_field_of_the_same_name():
    wire = set(job_pb2.DeviceResult.DESCRIPTOR.fields_by_name)
    assert {f.name for f in dataclasses.fields(DeviceResult)} <= wire
    assert {f.name for f in dataclasses.fields(RunnerInfo)} == set(job_pb2.RuntimeInfo.DESCRIPTOR.fields_by_name)


def test_the_wire_round_trips_ok_and_failed_results():
    message = OK.to_proto(job_id="c1@cpu/k", attempt=3, candidate_id="c1", device="cpu")
    assert (message.job_id, message.attempt, message.candidate_id, message.device) == ("c1@cpu/k", 3, "c1", "cpu")
    assert message.status == job_pb2.RESULT_STATUS_OK and message.runtime.providers == ["CPUExecutionProvider"]
    back = DeviceResult.from_proto(job_pb2.DeviceResult.FromString(message.SerializeToString()))
    assert back == OK.replace(attempt=3, crash_cause=None, stderr_tail="")
    unlabelled = DeviceResult.from_proto(OK.replace(top1_accuracy=None).to_proto())
    assert unlabelled.top1_accuracy is None                       # optional on the wire: absence survives
    crash = DeviceResult.failure(CrashCause(CrashKind.SIGNAL, "SIGSEGV"), 99, stderr_tail="Segmentation fault")
    message = crash.to_proto(job_id="j", attempt=1)
    assert (message.status, message.crash_cause) == (job_pb2.RESULT_STATUS_CRASH, "signal:SIGSEGV")
    assert DeviceResult.from_proto(message).crash_cause == CrashCause(CrashKind.SIGNAL, "SIGSEGV")
    with pytest.raises(KeyError):
        DeviceResult.from_proto(job_pb2.DeviceResult(status=job_pb2.RESULT_STATUS_UNSPECIFIED))


def test_report_entries_keep_the_keys_and_values_of_earlier_versions():
    runtime = {"runtime": "onnxruntime", "version": "1.32.0", "providers": ["CPUExecutionProvider"],
               "options": "graph_optimization=all threads=1"}
    assert OK.to_report() == {   # a local tune's ok result
        "status": "ok", "top1_agreement": 0.75, "top5_agreement": 1.0, "top1_accuracy": 0.5, "size_bytes": 1234,
        "latency_ms_p50": 1.5, "latency_ms_p90": 2.5, "num_images": 16, "wall_seconds": 0.123, "runtime": runtime}
    assert OK.replace(top1_accuracy=None).to_report()["top1_accuracy"] is None       # unlabelled: kept as null
    build = DeviceResult.failure(CrashCause(CrashKind.BUILD, "quantize: bad"))
    assert build.to_report() == {"status": "crash", "crash_cause": "build:quantize: bad", "size_bytes": 0}
    farm_crash = DeviceResult.from_proto(DeviceResult.failure(CrashCause(CrashKind.OOM), 7).to_proto(attempt=2))
    assert farm_crash.to_report() == {   # a farm result: what the agent sent, with the attempt kept
        "status": "crash", "crash_cause": "oom", "stderr_tail": "", "size_bytes": 7, "num_images": 0,
        "wall_seconds": 0.0, "runtime": {"runtime": "", "version": "", "providers": [], "options": ""},
        "attempt": 2}
    assert OK.to_fp32_report() == {"status": "ok", "top1_accuracy": 0.5, "size_bytes": 1234, "latency_ms_p50": 1.5,
                                   "latency_ms_p90": 2.5, "num_images": 16, "runtime": runtime}


def test_result_json_and_old_report_entries_parse_back():
    assert DeviceResult.from_dict(OK.to_json()) == OK
    assert DeviceResult.from_dict(OK.to_report()) == OK.replace(wall_seconds=0.123)
    old = {"status": "unsupported", "crash_cause": "error:no kernel", "stderr_tail": "", "size_bytes": 10,
           "attempt": 1, "a_key_a_later_version_adds": 1}
    parsed = DeviceResult.from_dict(old)
    assert parsed.status == ResultStatus.UNSUPPORTED and parsed.crash_cause == CrashCause(CrashKind.ERROR, "no kernel")
    assert parsed.to_report() == {k: v for k, v in old.items() if k != "a_key_a_later_version_adds"}


FIDELITY = OK.replace(
    fp32_latency_ms_p50=1.25, latency_ratio_vs_fp32=1.2, latency_ratio_p10=1.1, latency_ratio_p90=1.4,
    task="classification", output_sqnr_db=31.5, cosine=0.998, kl_divergence=0.01,
    outputs=(OutputFidelity("logits", 30.0, 0.99, kl=0.01), OutputFidelity("pooled", 35.0, 0.999)),
    user_metrics={"mae": 0.5, "outputs": 2.0})


def test_fidelity_and_latency_ratio_fields_round_trip_every_form():
    back = DeviceResult.from_proto(job_pb2.DeviceResult.FromString(FIDELITY.to_proto().SerializeToString()))
    assert back == FIDELITY.replace(crash_cause=None, stderr_tail="", attempt=0)
    assert DeviceResult.from_dict(FIDELITY.to_json()) == FIDELITY
    report = FIDELITY.to_report()
    assert report["outputs"] == {"logits": {"sqnr_db": 30.0, "cosine": 0.99, "kl": 0.01},
                                 "pooled": {"sqnr_db": 35.0, "cosine": 0.999}}       # iou/kl only where they apply
    assert report["user_metrics"] == {"mae": 0.5, "outputs": 2.0}
    ratios = (report["latency_ratio_vs_fp32"], report["latency_ratio_p10"], report["latency_ratio_p90"])
    assert ratios == (1.2, 1.1, 1.4)
    assert DeviceResult.from_dict(report) == FIDELITY.replace(wall_seconds=0.123)
    assert FIDELITY.latency_ratio_spread == (1.1, 1.4)
    assert {"fp32_latency_ms_p50", "latency_ratio_vs_fp32", "task"} <= set(FIDELITY.to_fp32_report())


def test_absent_metrics_stay_absent_over_the_wire():
    dense = DeviceResult(ResultStatus.OK, task="dense", output_sqnr_db=20.0, cosine=0.9, iou=0.8, size_bytes=5,
                         outputs=(OutputFidelity("prob", 20.0, 0.9, iou=0.8),))
    back = DeviceResult.from_proto(dense.to_proto())
    assert back.top1_agreement is None and back.latency_ms_p50 is None and back.user_metrics is None
    assert back.outputs == dense.outputs and back.outputs[0].kl is None
    assert "top1_agreement" not in back.to_report() and "latency_ratio_vs_fp32" not in back.to_report()
