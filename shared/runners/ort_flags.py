"""The `--ort-disable-optimizers` flag, shared by `agent register` and `coordinator tune` (the
session options of whichever process runs onnxruntime). Kept apart from shared/runners/ort.py so
that parsing arguments does not import onnxruntime."""
from __future__ import annotations

import argparse


def add_ort_optimizer_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ort-disable-optimizers", nargs="+", default=[], metavar="NAME",
        help="onnxruntime graph optimizers to run without (InferenceSession disabled_optimizers), recorded in "
             "every result's runtime options; e.g. WeightBiasQuantization, which otherwise quantizes again "
             "(per tensor) the weights of a float Conv/Gemm between QDQ nodes on the CPU EP. onnxruntime "
             "ignores names it does not know")
