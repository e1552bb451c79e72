"""The copies a seller serves: each copy exported as an ONNX graph that answers with the label alone
(input "x" (B, C, H, W) float32 in [0, 1], one output "label" (B,) int64), and run under ONNX Runtime.

An endpoint that runs the graph is a hard-label black box; the file itself is a white box (it holds
every weight of C and of the tracer), for the seller's serving, never for handing over.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from advforensics.errors import CheckpointError, InputValidationError
from advforensics.tracing.copies import ModelCopy
from advforensics.utils import atomic_target, sha256_file


class LabelOnly(nn.Module):
    """A copy that returns its label only: what a hard-label endpoint may reveal."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).argmax(dim=1)  # (B,) int64


def export_onnx(model: ModelCopy, path: Path, example: torch.Tensor) -> None:
    """Export one copy as ONNX: input 'x' (B, C, H, W) float32 in [0, 1], output 'label' (B,) int64.

    Uses torch's dynamo exporter (needs the onnxscript package): the TorchScript exporter cannot
    export adaptive average pooling with non-divisible sizes, which the zoo models use."""
    try:
        import onnxscript  # noqa: F401
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise InputValidationError("ONNX export needs the 'onnxscript' package: pip install onnxscript") from error
    import logging
    import warnings

    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1)
    # The exporter logs a warning per missing torchvision operator; none of them is used here.
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(LabelOnly(model).eval(), (example,), dynamo=True, input_names=["x"],
                                        output_names=["label"], dynamic_shapes=({0: batch},), verbose=False)
    finally:
        onnx_logger.setLevel(level)
    with atomic_target(path) as tmp:
        program.save(str(tmp))


def onnx_labels(path: str | Path, x: torch.Tensor, expected_sha256: str | None = None) -> torch.Tensor:
    """Labels (B,) of an exported copy under onnxruntime; with `expected_sha256` (the record's
    onnx_sha256) a file that differs is refused (CheckpointError) before it is run."""
    import onnxruntime as ort

    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise CheckpointError(f"{Path(path).name} does not match the record (modified or replaced)")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    if outputs == ["scores"]:  # copies exported before the label-only format
        return torch.from_numpy(np.asarray(session.run(["scores"], {"x": x.float().numpy()})[0]).argmax(1))
    return torch.from_numpy(np.asarray(session.run(["label"], {"x": x.float().numpy()})[0]).astype(np.int64))


__all__ = ["LabelOnly", "export_onnx", "onnx_labels"]
