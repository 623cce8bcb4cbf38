"""Real reports for the report.html tests: a local `coordinator tune` of a tiny model whose node
names are hostile, and a farm campaign over two device classes (one a test runtime without a
quantized Gemm kernel, so candidates diverge across classes and crash blame has work)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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


@contextmanager
def two_class_campaign(tmp: Path, spec) -> Iterator[tuple[object, str, str]]:
    """`spec` run to its end on cpu-a (onnxruntime) and npu-x (no quantized Gemm); yields the
    coordinator (still serving), its address and the campaign id."""
    from coordinator.farm.client import CampaignClient

    with coordinator(tmp / "coord") as (server, address), AgentThread("cpu-a", address, tmp / "a"), \
            AgentThread("npu-x", address, tmp / "n", runtime="tests.device_runtimes:no_quantized_gemm"), \
            CampaignClient(address) as client:
        campaign = client.submit(spec)
        final = client.wait(campaign, poll_s=0.2, timeout_s=300)
        assert final.state == "done", final.message
        yield server, address, campaign


def farm_campaign_report(tmp: Path, out: Path, max_candidates: int = 4) -> int:
    """A campaign on cpu-a and npu-x, then `coordinator report`. allow_slower: the pages must show a
    recommendation on each class whether or not INT8 of a tiny model pays on this machine."""
    from coordinator.cli import main

    spec = tiny_spec(tmp, make_classifier(tmp / "tiny.onnx"), ["cpu-a", "npu-x"], max_candidates=max_candidates,
                     allow_slower=True)
    with two_class_campaign(tmp, spec) as (_, address, campaign):
        return main(["report", campaign, "-o", str(out), "--coordinator", address])


FLEET_MODELS = ("tiny-a", "tiny-b")
FLEET_DEVICES = ("cpu-a", "npu-x")


def fleet_spec(tmp: Path, max_candidates: int = 2):
    """A campaign of two tiny models on cpu-a and npu-x. allow_slower: what the pages show must not
    hang on whether INT8 of a tiny model pays on this machine."""
    models = [make_classifier(tmp / f"{FLEET_MODELS[0]}.onnx"),
              make_classifier(tmp / f"{FLEET_MODELS[1]}.onnx", seed=1)]
    return tiny_spec(tmp, models, list(FLEET_DEVICES), max_candidates=max_candidates, name="fleet",
                     allow_slower=True)
