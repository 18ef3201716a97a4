"""LitServe serving the benchmark's fp32 model with batching on (``benchmarks/serve_vs_peers.py`` starts it).

.venvs/litserve/bin/python benchmarks/peers/litserve_service.py --port PORT
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import litserve as ls

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


class DriverAPI(ls.LitAPI):
    def setup(self, device):
        self.classifier = common.load_classifier()

    def decode_request(self, request):
        return common.prepare(self.classifier, request["image"])

    def predict(self, inputs):
        return common.predict(self.classifier, inputs)

    def encode_response(self, output):
        return output


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    api = DriverAPI(max_batch_size=common.BATCH, batch_timeout=common.BATCH_DELAY_S, api_path="/predict")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60)
    # No access log: our model server keeps none either.
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
