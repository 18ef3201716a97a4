"""Export the trained network to ONNX as the artifact contract in ``train/artifact.py`` says."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from distracted_driver.fsutil import atomic_path
from distracted_driver.train.artifact import FEATURES_NAME, INPUT_NAME, OUTPUT_NAME
from distracted_driver.train.model import Classifier, EfficientNetLite0

OPSET = 17


class _Backbone(torch.nn.Module):
    def __init__(self, model: EfficientNetLite0):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


class _WithFeatures(torch.nn.Module):
    """The classifier that also hands out the pooled features its head reads (for monitoring)."""

    def __init__(self, model: EfficientNetLite0):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.features(x)
        return torch.softmax(self.model.classify(features), dim=1), features


def export_onnx(model: EfficientNetLite0, path: str | Path, image_size: int, opset: int = OPSET,
                features: bool = True) -> Path:
    """Write backbone + head + softmax as ONNX: ``input`` [N,3,S,S] → ``probabilities`` [N,10], N dynamic.

    With ``features`` (the artifact's model) the graph has a second output, ``features`` [N,1280]:
    the pooled backbone output the head reads. Only monitoring fetches it; ``features=False``
    writes the classifier alone.
    """
    if features:
        return _export(_WithFeatures(model), path, image_size, (OUTPUT_NAME, FEATURES_NAME), opset)
    return _export(Classifier(model), path, image_size, (OUTPUT_NAME,), opset)


def export_backbone_onnx(model: EfficientNetLite0, path: str | Path, image_size: int, opset: int = OPSET) -> Path:
    """The backbone alone: ``input`` [N,3,S,S] → ``features`` [N,1280] (frozen-backbone feature extraction)."""
    return _export(_Backbone(model), path, image_size, (FEATURES_NAME,), opset)


def _export(module: torch.nn.Module, path: str | Path, image_size: int, output_names: tuple[str, ...],
            opset: int) -> Path:
    module = module.eval()
    example = torch.zeros(2, 3, image_size, image_size)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the torch.export one, which needs
        # onnxscript; this graph has no control flow, so tracing captures it exactly. The
        # tracer also notes that the SAME-padding amounts become constants: they are, since
        # the input's spatial size is fixed in the exported graph.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            dynamo=False,
            external_data=False,
            input_names=[INPUT_NAME],
            output_names=list(output_names),
            dynamic_axes={INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in output_names}},
            opset_version=opset,
            do_constant_folding=True,
        )
    return Path(path)
