"""A readable console: `coordinator tune` with stdout and stderr not a terminal prints one line per
stage and per result batch, and other libraries' warnings (onnxruntime's quantizer warns once per
candidate it builds) go to third-party.log in the output folder, counted once in the summary."""
from __future__ import annotations

import re
import subprocess
import sys

from tests.farm_support import IMAGES, ROOT
from tests.models import make_classifier


def test_a_non_tty_tune_prints_stage_and_batch_lines_and_files_library_warnings(tmp_path):
    model = make_classifier(tmp_path / "tiny.onnx")
    out = tmp_path / "out"
    # int16 activations on an opset-17 model: the quantizer warns (on the root logger) for every build
    proc = subprocess.run([sys.executable, "-m", "coordinator.cli", "tune", str(model), "--images", str(IMAGES),
                           "--out", str(out), "--input-size", "32", "--calibration", "8", "--eval", "16",
                           "--latency-runs", "1", "--max-candidates", "4", "--ranking-images", "4", "--threads", "1",
                           "--activation-type", "int16", "--no-reduce-range"],     # pinned recipe: no probe stage
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""                           # errors only: progress is ordinary output
    stdout = proc.stdout.splitlines()
    assert stdout[:4] == ["preparing model and data", "measuring the FP32 reference", "ranking layer sensitivity",
                          "evaluating candidates"]
    batches = [line for line in stdout[4:] if line.startswith("  results ")]
    assert batches and batches[-1] == "  results 4/4"
    assert stdout[4:4 + len(batches)] == batches      # then the table: no other line per candidate
    assert not any("16-bit" in line for line in stdout)   # not on the terminal
    logged = (out / "third-party.log").read_text().splitlines()
    assert len(logged) >= 4 and all("WARNING" in line and "16-bit" in line for line in logged)
    [summary] = [line for line in stdout if "messages from other libraries" in line]
    assert int(re.match(r"(\d+) messages", summary).group(1)) == len(logged)
    assert str(out / "third-party.log") in summary
    # the whole run: stage and batch lines, the front table, a few summary lines (what the device measured
    # with among them; the policy's verdict wraps onto a second line or not, by the measured ratios);
    # nothing per candidate
    assert len(stdout) <= 27


def test_waiting_on_the_farm_prints_stages_and_finished_batches_only():
    from coordinator.farm.commands import batch_in_progress

    assert batch_in_progress("tiny: 3/12 results")
    assert not batch_in_progress("tiny: 12/12 results")
    assert not batch_in_progress("tiny: ranking layer sensitivity")


def test_a_batch_line_counts_failures_and_names_the_first():
    from coordinator.progress_lines import line_events
    from shared.results import DeviceResult

    lines: list[str] = []
    events = line_events(lines.append, devices=2)
    events.on_stage("evaluating candidates")
    events.on_plan(2)                                    # 2 candidates x 2 device classes
    ok = DeviceResult(status="ok", top1_agreement=1.0, top5_agreement=1.0, latency_ms_p50=1.0, latency_ms_p90=1.0)
    events.on_result("a" * 16, "cpu", ok)
    events.on_result("a" * 16, "npu", DeviceResult(status="crash", crash_cause="signal:SIGSEGV"))
    events.on_result("b" * 16, "cpu", ok)
    assert lines == ["evaluating candidates"]            # nothing until the batch is complete
    events.on_result("b" * 16, "npu", DeviceResult(status="unsupported", crash_cause="error:no kernel"))
    assert lines[1] == "  results 4/4, 2 failed; aaaaaaaaaa on npu: crash (signal:SIGSEGV)"
