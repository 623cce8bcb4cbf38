"""Real reports for the report.html tests: a local `coordinator tune` of a tiny model whose node
names are hostile, and a farm campaign over two device classes (one a test runtime without a
quantized Gemm kernel, so candidates diverge across classes and crash blame has work)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx

from tests.farm_support import IMAGES, AgentThread, coordinator, tiny_spec
from tests.models import make_classifier

HOSTILE_NODE = "<script>alert(1)</script>"


def hostile_model(path: Path) -> Path:
    """The tiny classifier with one conv renamed to an HTML script tag."""
    model = onnx.load(str(make_classifier(path.with_name("plain.onnx"))))
    for node in model.graph.node:
        if node.name == "conv1":
            node.name = HOSTILE_NODE
    onnx.save(model, str(path))
    return path


def local_tune(model: Path, out: Path, *extra: str) -> int:
    """`coordinator tune` in this process, small enough for a test."""
    from coordinator.cli import main

    return main(["tune", str(model), "--images", str(IMAGES), "--out", str(out), "--input-size", "32",
                 "--calibration", "8", "--eval", "16", "--latency-runs", "2", "--max-candidates", "3",
                 "--ranking-images", "4", "--threads", "1", *extra])


def farm_campaign_report(tmp: Path, out: Path, max_candidates: int = 4) -> int:
    """A campaign on cpu-a (onnxruntime) and npu-x (no quantized Gemm), then `coordinator report`."""
    from coordinator.cli import main
    from coordinator.farm.client import CampaignClient

    model = make_classifier(tmp / "tiny.onnx")
    # allow_slower: the pages are tested, not whether INT8 of a tiny model pays on this machine now
    spec = dataclasses.replace(tiny_spec(tmp, model, ["cpu-a", "npu-x"], max_candidates=max_candidates),
                               allow_slower=True)
    with coordinator(tmp / "coord") as (_, address), AgentThread("cpu-a", address, tmp / "a"), \
            AgentThread("npu-x", address, tmp / "n", runtime="tests.device_runtimes:no_quantized_gemm"), \
            CampaignClient(address) as client:
        campaign = client.submit(spec)
        final = client.wait(campaign, poll_s=0.2, timeout_s=300)
        assert final.state == "done", final.message
        return main(["report", campaign, "-o", str(out), "--coordinator", address])
