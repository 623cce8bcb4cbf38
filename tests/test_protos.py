"""The generated stubs in shared/pb are exactly what scripts/gen_protos.py produces."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_generated_stubs_are_up_to_date():
    proc = subprocess.run([sys.executable, "scripts/gen_protos.py", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_job_messages_round_trip():
    from shared.pb.qfarm.v1 import job_pb2

    result = job_pb2.DeviceResult(job_id="c1/cpu", attempt=2, status=job_pb2.RESULT_STATUS_CRASH,
                                  crash_cause="signal:SIGSEGV", top1_accuracy=0.5)
    again = job_pb2.DeviceResult.FromString(result.SerializeToString())
    assert again == result and again.HasField("top1_accuracy")
    assert not job_pb2.DeviceResult().HasField("top1_accuracy")
