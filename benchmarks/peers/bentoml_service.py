"""BentoML serving the benchmark's fp32 model with adaptive batching on (``benchmarks/serve_vs_peers.py`` starts it).

    .venvs/bentoml/bin/python benchmarks/peers/bentoml_service.py --port PORT

A batchable API takes a list: a request is ``{"image": ["<base64 JPEG>"]}``, the answer a list of one
row of ten probabilities; BentoML's dispatcher merges the requests' lists into batches of up to 8.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import bentoml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


# No access log: our model server keeps none either.
@bentoml.service(workers=1, traffic={"timeout": 60}, logging={"access": {"enabled": False}})
class DriverClassifier:
    def __init__(self) -> None:
        self.classifier = common.load_classifier()

    @bentoml.api(batchable=True, max_batch_size=common.BATCH, max_latency_ms=60_000)
    def predict(self, image: list[str]) -> list[list[float]]:
        return common.predict(self.classifier, [common.prepare(self.classifier, item) for item in image])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    here = Path(__file__).resolve().parent
    command = [
        str(Path(sys.executable).parent / "bentoml"),
        "serve",
        f"{Path(__file__).stem}:DriverClassifier",
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
        "--working-dir",
        str(here),
    ]
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
