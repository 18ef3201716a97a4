"""Export the trained network to ONNX as the artifact contract in ``model/artifact.py`` says, in fp32 and int8.

``export_onnx`` writes the fp32 model: traced by torch, then tidied (constants
folded by ONNX Runtime's basic, hardware-independent optimizations; the
explicit zero Pad before each stride-2 convolution folded into that
convolution's own asymmetric ``pads``, which both ONNX Runtime's fp32 and int8
kernels then do for free). ``quantize_int8`` turns it into a statically
quantized int8 model with ONNX Runtime's own ``quantize_static``: QDQ format,
per-channel int8 weights, uint8 activations calibrated on training images.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from distracted_driver.fsutil import atomic_path
from distracted_driver.model.artifact import FEATURES_NAME, INPUT_NAME, OUTPUT_NAME
from distracted_driver.train.model import Classifier, EfficientNetLite0

OPSET = 17
# Calibration images for int8 (training images only, through the artifact's own preprocessing).
CALIBRATION_IMAGES = 64
# Images per calibration run. ONNX Runtime runs the calibration model unoptimised, and its peak
# memory grows by about 80 MB per image of the batch (2.1 GB at 16, 0.5 GB at 1 for this network);
# the ranges are the min and max over all batches, so the batch size changes nothing else.
CALIBRATION_BATCH = 2
# Left in fp32 when quantizing: the stem and the first block, at full resolution, where the image's
# whole 8-bit range meets the largest weights. On CPUs without VNNI (AVX2) ONNX Runtime's uint8 x int8
# kernels saturate there: quantizing the stem alone raised the demo model's validation log loss from
# 0.037 to 0.41, the first block alone to 0.21, any later block alone by under 0.005
# (benchmarks/int8_sensitivity.py). They hold about 5 % of the network's multiply-adds.
FLOAT_NODE_PREFIXES = ("/model/_conv_stem/", "/model/_blocks.0/")


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
        # Through the network's own call (not its .features method), so that the traced nodes are named
        # under /model/ as the plain classifier's are: FLOAT_NODE_PREFIXES finds them in both.
        logits, features = self.model(x, with_features=True)
        return torch.softmax(logits, dim=1), features


def export_onnx(
    model: EfficientNetLite0, path: str | Path, image_size: int, opset: int = OPSET, features: bool = True
) -> Path:
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


def _export(
    module: torch.nn.Module, path: str | Path, image_size: int, output_names: tuple[str, ...], opset: int
) -> Path:
    module = module.eval()
    example = torch.zeros(2, 3, image_size, image_size)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the torch.export one, which needs
        # onnxscript; this graph has no control flow, so tracing captures it exactly. The
        # tracer also notes that the SAME-padding amounts become constants: they are, since
        # the input's spatial size is fixed in the exported graph.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        # torch cannot fold the Slice its pad export emits; _tidy folds every constant after it.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
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
        _tidy(tmp)
    return Path(path)


def _tidy(path: Path) -> None:
    """Fold constants (ONNX Runtime's basic level: standard ONNX out), then each zero Pad into its Conv."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with tempfile.TemporaryDirectory(prefix="export-") as scratch:
        options.optimized_model_filepath = str(Path(scratch) / "folded.onnx")
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        model = onnx.load(options.optimized_model_filepath)
    fold_pads_into_convs(model)
    _drop_unused_initializers(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def fold_pads_into_convs(model) -> int:
    """Remove each constant zero Pad of the two spatial axes whose only reader is a Conv, adding its amounts
    to that Conv's ``pads`` (ONNX allows them asymmetric). Returns how many were folded."""
    graph = model.graph
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    folded = 0
    for pad in [node for node in graph.node if node.op_type == "Pad"]:
        amounts = _zero_spatial_pads(pad, constants, helper)
        users = readers.get(pad.output[0], [])
        if amounts is None or len(users) != 1 or users[0].op_type != "Conv":
            continue
        conv = users[0]
        attributes = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        if attributes.get("auto_pad", b"NOTSET") != b"NOTSET":
            continue
        top, left, bottom, right = attributes.get("pads", [0, 0, 0, 0])
        merged = [top + amounts[0], left + amounts[1], bottom + amounts[2], right + amounts[3]]
        for attribute in [a for a in conv.attribute if a.name == "pads"]:
            conv.attribute.remove(attribute)
        conv.attribute.append(helper.make_attribute("pads", merged))
        conv.input[0] = pad.input[0]
        graph.node.remove(pad)
        folded += 1
    return folded


def _drop_unused_initializers(model) -> None:
    """Constants no node reads any more (the folded Pads' amounts): ONNX Runtime warns about each at load."""
    graph = model.graph
    read = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(tensor)


def _zero_spatial_pads(pad, constants: dict, helper) -> list[int] | None:
    """[top, left, bottom, right] of a constant-mode, zero-valued Pad of a 4-D tensor's last two axes, else None."""
    attributes = {a.name: helper.get_attribute_value(a) for a in pad.attribute}
    if attributes.get("mode", b"constant") != b"constant" or pad.input[1] not in constants:
        return None
    if len(pad.input) > 2 and pad.input[2] and (pad.input[2] not in constants or constants[pad.input[2]].any()):
        return None
    if len(pad.input) > 3 and pad.input[3]:  # explicit axes
        return None
    amounts = constants[pad.input[1]].tolist()
    if len(amounts) != 8 or any(amounts[i] for i in (0, 1, 4, 5)) or min(amounts) < 0:
        return None
    return [amounts[2], amounts[3], amounts[6], amounts[7]]


class _Batches:
    """ONNX Runtime's calibration reader protocol over preprocessed batches."""

    def __init__(self, batches: Iterable[np.ndarray]):
        self._batches = iter(batches)

    def get_next(self) -> dict | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, calibration: Iterable[np.ndarray]) -> dict:
    """Write the int8 (QDQ) model of ``fp32_path`` to ``int8_path``; returns how it was quantized.

    ``calibration`` yields preprocessed ``[n, 3, S, S]`` batches of training images: the activation ranges
    come from them (min/max). Weights are int8 per output channel, activations uint8 (what ONNX Runtime's
    x86 kernels run fastest); the softmax and ``FLOAT_NODE_PREFIXES`` stay fp32.
    """

    class Reader(_Batches, CalibrationDataReader):
        pass

    counted: list[int] = []

    def counting(batches):
        for batch in batches:
            counted.append(len(batch))
            yield batch

    with tempfile.TemporaryDirectory(prefix="quantize-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_optimization=True)
        nodes = onnx.load(str(prepared)).graph.node
        kept = [node.name for node in nodes if node.name.startswith(FLOAT_NODE_PREFIXES)]
        if not kept:
            raise ValueError(
                f"{fp32_path} has no node under {', '.join(FLOAT_NODE_PREFIXES)}: the network's layout "
                "changed, and the layers to keep in fp32 must be named again"
            )
        softmax = [node.name for node in nodes if node.op_type == "Softmax"]
        with atomic_path(int8_path) as tmp:
            quantize_static(
                str(prepared),
                str(tmp),
                Reader(counting(calibration)),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=kept + softmax,
            )
    if not counted:
        raise ValueError("no calibration images: int8 needs training images to calibrate on")
    return {
        "format": "QDQ",
        "weights": "int8, per output channel",
        "activations": "uint8",
        "calibration": "min/max",
        "calibration_images": int(sum(counted)),
        "fp32_nodes": sorted(kept + softmax),
        "onnxruntime": _ort_version(),
    }


def _ort_version() -> str:
    return onnxruntime.__version__
