"""Which layers int8 hurts: validation log loss with one part of the network quantized at a time.

    .venv/bin/python benchmarks/int8_sensitivity.py

The model is ``serve_vs_peers.py``'s (EfficientNet-Lite0 trained by the training job on the demo
sample; trained there on first use). Quantization is ``train.export.quantize_int8``'s (ONNX Runtime's
``quantize_static``: QDQ, per-channel int8 weights, uint8 activations, min/max over the same 64
training images), except for which nodes it covers:

- **one part alone**: the stem, each of the 16 blocks, the head convolution, the classifier head;
- **everything** (the softmax aside), run twice: with ONNX Runtime's optimizations, i.e. its real
  integer kernels, and with none, where every QuantizeLinear/DequantizeLinear pair runs as float
  arithmetic around float kernels (the rounding of int8 alone, no integer arithmetic);
- **what the export ships**: everything but ``FLOAT_NODE_PREFIXES``.

On a CPU without VNNI (AVX2) the uint8 x int8 kernels sum pairs of products in 16 bits and saturate;
the gap between the two "everything" lines is that. Prints one line per part and draws
``reports/int8_sensitivity.png``.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_vs_peers as peers  # noqa: E402  (the trained, gated benchmark model)

from distracted_driver.config import Settings  # noqa: E402
from distracted_driver.data.channel import decoded_batches, read_records  # noqa: E402
from distracted_driver.model.evaluate import log_loss  # noqa: E402
from distracted_driver.model.registry import Registry  # noqa: E402
from distracted_driver.storage import open_storage  # noqa: E402
from distracted_driver.train.export import CALIBRATION_IMAGES, FLOAT_NODE_PREFIXES  # noqa: E402

PLOT = peers.ROOT / "reports" / "int8_sensitivity.png"


def part_of(name: str) -> str:
    found = re.search(r"_blocks\.(\d+)/", name)
    if found:
        return f"block {int(found.group(1)):02d}"
    if "_conv_stem" in name:
        return "stem"
    if "_conv_head" in name:
        return "head conv"
    return "classifier"


def main() -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from sample_channels import sample_channels

    settings = Settings(root=peers.CACHE / "root", endpoint_name="peers-bench")
    job = peers.gated_model(settings)
    artifact = Registry(open_storage(settings), settings).fetch_artifact(job, peers.CACHE / "artifact")
    _, channels = sample_channels()
    train, _ = read_records(channels / "train")
    chosen = [train[i * len(train) // CALIBRATION_IMAGES] for i in range(CALIBRATION_IMAGES)]
    calibration = np.concatenate([b.images for b in decoded_batches(chosen, artifact.preprocessing, 16)])
    validation, _ = read_records(channels / "validation")
    batches = list(decoded_batches(validation, artifact.preprocessing, 32))
    images, labels = np.concatenate([b.images for b in batches]), np.concatenate([b.labels for b in batches])

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration[i : i + 16] for i in range(0, len(calibration), 16))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch}

    def score(path: Path, optimized: bool = True) -> float:
        options = ort.SessionOptions()
        if not optimized:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        rows = np.concatenate([session.run(None, {"input": images[i : i + 32]})[0] for i in range(0, len(images), 32)])
        return log_loss(labels, rows)

    with tempfile.TemporaryDirectory(prefix="int8-sensitivity-") as scratch:
        scratch = Path(scratch)
        prepared = scratch / "prepared.onnx"
        quant_pre_process(str(artifact.model_path), str(prepared), skip_optimization=True)
        nodes = [n for n in onnx.load(str(prepared)).graph.node if n.op_type != "Softmax"]
        parts: dict[str, list[str]] = {}
        for node in nodes:
            parts.setdefault(part_of(node.name), []).append(node.name)
        cache = scratch / "calibration.json"

        def quantized(covered: list[str]) -> Path:
            out = scratch / "q.onnx"
            quantize_static(
                str(prepared),
                str(out),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=covered,
                calibration_cache_path=cache,
            )
            return out

        fp32 = score(artifact.model_path)
        print(f"model {job}: fp32 validation log loss {fp32:.4f} on {len(labels)} images", flush=True)
        rows = []
        for part, names in sorted(parts.items()):
            rows.append((f"{part} alone", score(quantized(names))))
            print(f"{rows[-1][0]:<28} {rows[-1][1]:.4f}", flush=True)
        everything = quantized([n.name for n in nodes])
        rows.append(("everything, integer kernels", score(everything)))
        rows.append(("everything, float arithmetic", score(everything, optimized=False)))
        shipped = [n.name for n in nodes if not n.name.startswith(FLOAT_NODE_PREFIXES)]
        rows.append(("as shipped (stem, block 0 fp32)", score(quantized(shipped))))
        for name, value in rows[-3:]:
            print(f"{name:<28} {value:.4f}", flush=True)
    plot(rows, fp32, PLOT)
    print(f"plot: {PLOT}")


def plot(rows: list[tuple[str, float]], fp32: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from distracted_driver.fsutil import atomic_path

    fig, ax = plt.subplots(figsize=(8, 7))
    ax.barh([name for name, _ in rows], [value for _, value in rows], color="tab:blue")
    ax.axvline(fp32, color="grey", linestyle=":", label=f"fp32 {fp32:.4f}")
    ax.set_xscale("log")
    ax.set_xlabel("validation log loss (log scale)")
    ax.invert_yaxis()
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
