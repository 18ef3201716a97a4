"""The model server as a real process on loopback: contract, hostile inputs, batching, overload, shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest
from hostile_clients import json_error
from metrics_support import parse_metrics
from waiting import wait_until, wait_until_async

from distracted_driver.hosting.local.instances import free_port
from distracted_driver.loadtest.hostile import malformed_requests, parse_answer, raw_exchange, slowloris

pytestmark = pytest.mark.slow  # every test here starts a real server process

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 30
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")  # the line the server logs with its port


class ServerProcess:
    """``python -m distracted_driver.serve.server`` on a free port; the port is read from its log."""

    def __init__(self, model_dir: Path, log_path: Path, *args: str):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distracted_driver.serve.server",
                "--model-dir",
                str(model_dir),
                "--port",
                "0",
                *args,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        self.url = self._wait_for_port()

    def _wait_for_port(self) -> str:
        return wait_until(
            lambda: LISTENING.search(self.log_path.read_text()),
            START_TIMEOUT_S,
            what="the server's port",
            process=self.proc,
            details=self.log_path.read_text,
        ).group(1)

    def wait_ready(self) -> None:
        wait_until(
            lambda: get(self.url + "/ping")[0] == 200,
            START_TIMEOUT_S,
            what="the server to be ready",
            process=self.proc,
            details=self.log_path.read_text,
        )

    def metrics(self) -> dict[str, float]:
        return parse_metrics(get(self.url + "/metrics")[2])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def request(
    url: str,
    body: bytes | None = None,
    content_type: str | None = None,
    accept: str | None = None,
    method: str | None = None,
):
    headers = {}
    if content_type:
        headers["Content-Type"] = content_type
    if accept:
        headers["Accept"] = accept
    req = urllib.request.Request(
        url, data=body, headers=headers, method=method or ("POST" if body is not None else "GET")
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def get(url: str):
    return request(url)


def invoke(server: ServerProcess, body: bytes, content_type: str = "image/jpeg", accept: str | None = None):
    status, headers, text = request(server.url + "/invocations", body, content_type, accept)
    return status, headers, json.loads(text)


def jpeg(seed: int = 0, size=(480, 640)) -> bytes:
    small = np.random.default_rng(seed).integers(0, 255, (size[0] // 16, size[1] // 16, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", cv2.resize(small, (size[1], size[0])))[1].tobytes()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A valid 1-bit greyscale PNG of ``width x height`` zeros: ~50 KB that decode to 1.2 GB of BGR."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def huge_png_header() -> bytes:
    """Only a signature and an IHDR claiming 100000 x 100000 pixels."""
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))


@pytest.fixture(scope="module")
def model(make_artifact):
    return make_artifact("server-test-v1", seed=1)


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    process = ServerProcess(
        model.directory,
        tmp_path_factory.mktemp("server") / "server.log",
        "--max-batch-size",
        "8",
        "--max-batch-delay-ms",
        "20",
    )
    process.wait_ready()
    yield process
    assert process.stop() == 0


@pytest.fixture
def start_server(model, tmp_path):
    started = []

    def start(*args: str, model_dir: Path | None = None) -> ServerProcess:
        started.append(ServerProcess(model_dir or model.directory, tmp_path / f"server{len(started)}.log", *args))
        return started[-1]

    yield start
    for process in started:
        process.stop()


# --- the contract ------------------------------------------------------------------


def test_ping_turns_healthy_only_after_warm_up(make_artifact, start_server):
    slow = make_artifact("server-test-slow-warmup", seed=2, input_size=256)
    process = start_server("--warmup-runs", "200", model_dir=slow.directory)
    status, headers, text = get(process.url + "/ping")
    assert status == 503 and json.loads(text)["status"] == "loading"
    assert headers["X-Model-Version"] == "server-test-slow-warmup"
    status, _, refused = invoke(process, jpeg())
    assert status == 503 and refused["error"] == "ModelNotReady"
    process.wait_ready()
    assert invoke(process, jpeg())[0] == 200
    assert process.metrics()["model_ready"] == 1


def test_invocation_answers_ten_probabilities(server):
    status, headers, probabilities = invoke(server, jpeg(1))
    assert status == 200
    assert headers["X-Model-Version"] == "server-test-v1"
    assert len(probabilities) == 10 and all(0 <= p <= 1 for p in probabilities)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("accept", ["application/json;verbose=true", "application/json; verbose=True, */*"])
def test_verbose_answer(server, accept):
    status, _, answer = invoke(server, jpeg(2), accept=accept)
    assert status == 200
    assert set(answer) == {"class", "label", "confidence", "probabilities", "model_version"}
    assert sum(answer["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    best = int(np.argmax(answer["probabilities"]))
    assert answer["class"] == f"c{best}" and answer["confidence"] == max(answer["probabilities"])
    assert answer["model_version"] == "server-test-v1" and answer["label"]


def test_every_image_type_gives_the_same_answer(server):
    image = cv2.imdecode(np.frombuffer(jpeg(3), np.uint8), cv2.IMREAD_COLOR)
    png = cv2.imencode(".png", image)[1].tobytes()
    answers = [
        invoke(server, png, content_type)[2]
        for content_type in ("image/png", "application/x-image", "image/png; charset=binary")
    ]
    assert answers[0] == answers[1] == answers[2]


def test_every_response_is_json_with_the_version(server):
    for url, method in ((server.url + "/nowhere", "GET"), (server.url + "/ping", "POST")):
        status, headers, text = request(url, method=method)
        assert status in (404, 405) and headers["X-Model-Version"] == "server-test-v1"
        assert json.loads(text)["message"]
    status, headers, text = get(server.url + "/metrics")
    assert status == 200 and headers["X-Model-Version"] == "server-test-v1"
    assert "model_batch_size_bucket" in text


# --- hostile inputs -----------------------------------------------------------------

GOOD = jpeg(4)
BAD_INPUTS = {
    "zero bytes": (b"", "image/jpeg", 400, "empty"),
    "text as image": (b"hello, I am not a picture", "image/jpeg", 400, "signature"),
    "wrong magic": (b"GIF89a" + GOOD[6:], "image/jpeg", 400, "signature"),
    "truncated jpeg": (GOOD[: len(GOOD) * 2 // 3], "image/jpeg", 400, "truncated"),
    "jpeg without end marker": (GOOD[:-2], "image/jpeg", 400, "truncated"),
    "header only": (GOOD[:20], "image/jpeg", 400, "header"),
    "huge png header": (huge_png_header(), "image/png", 400, "exceeds the limit"),
    "png bomb": (png_bomb(), "image/png", 400, "exceeds the limit"),
    "7 MB body": (GOOD + b"\0" * 7_000_000, "image/jpeg", 413, "6291456"),
    "wrong content type": (GOOD, "text/plain", 415, "image/jpeg"),
    "json body": (b'{"base64Image": "abc"}', "application/json", 415, "image/png"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_refused_with_a_json_message(server, name):
    body, content_type, expected_status, words = BAD_INPUTS[name]
    status, headers, answer = invoke(server, body, content_type)
    assert status == expected_status, answer
    assert set(answer) == {"error", "message"} and words in answer["message"]
    assert headers["X-Model-Version"] == "server-test-v1"


def test_bombs_are_refused_without_being_decoded(server):
    for _ in range(3):
        assert invoke(server, png_bomb(), "image/png")[0] == 400
    # Decoding even one would have taken 1.2 GB.
    assert server.metrics()["process_max_resident_memory_bytes"] < 600e6
    assert get(server.url + "/ping")[0] == 200


# --- batching, overload, shutdown ------------------------------------------------------


async def _post_many(url: str, bodies: list[bytes]) -> list[tuple[int, dict]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one(body: bytes):
            async with session.post(url + "/invocations", data=body, headers={"Content-Type": "image/jpeg"}) as r:
                return r.status, await r.json()

        return await asyncio.gather(*(one(b) for b in bodies))


def test_concurrent_requests_share_a_batch(server):
    before = server.metrics()
    images = [jpeg(10 + i) for i in range(24)]
    answers = asyncio.run(_post_many(server.url, images))
    assert all(status == 200 for status, _ in answers)
    after = server.metrics()
    runs = after["model_batch_size_count"] - before["model_batch_size_count"]
    images_run = after["model_batch_size_sum"] - before["model_batch_size_sum"]
    assert images_run == 24 and runs < 24, f"{runs} runs for 24 concurrent requests"
    # A batched answer is the answer the image gets alone.
    alone = invoke(server, images[5])[2]
    assert answers[5][1] == pytest.approx(alone, abs=1e-6)


def test_full_queue_answers_503_at_once(start_server):
    process = start_server("--queue-size", "2", "--max-batch-size", "64", "--max-batch-delay-ms", "4000")
    process.wait_ready()

    async def scenario():
        waiting = asyncio.ensure_future(_post_many(process.url, [jpeg(20), jpeg(21)]))
        await wait_until_async(
            lambda: process_queue_depth(process) == 2, timeout_s=START_TIMEOUT_S, what="two requests queued"
        )
        refused = await _post_many(process.url, [jpeg(22)])
        # Answered while the queue still held the other two: the refusal did not wait for their batch.
        return refused, waiting.done(), process_queue_depth(process), await waiting

    refused, batch_ran, depth_after, waiting = asyncio.run(scenario())
    assert refused[0][0] == 503 and refused[0][1]["error"] == "Overloaded"
    assert not batch_ran and depth_after == 2
    assert [status for status, _ in waiting] == [200, 200]


def process_queue_depth(process: ServerProcess) -> float:
    return process.metrics()["model_queue_depth"]


def test_sigterm_drains_requests_in_flight(start_server):
    process = start_server("--max-batch-size", "64", "--max-batch-delay-ms", "1500")
    process.wait_ready()

    async def scenario():
        in_flight = asyncio.ensure_future(_post_many(process.url, [jpeg(30 + i) for i in range(3)]))
        await wait_until_async(
            lambda: process_queue_depth(process) == 3, timeout_s=START_TIMEOUT_S, what="three requests queued"
        )
        process.proc.send_signal(signal.SIGTERM)
        return await in_flight

    answers = asyncio.run(scenario())
    assert [status for status, _ in answers] == [200, 200, 200]
    assert all(len(probabilities) == 10 for _, probabilities in answers)
    assert process.proc.wait(timeout=20) == 0
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(process.url + "/ping", timeout=5)
    assert "draining 3 request(s)" in process.log_path.read_text()


def test_broken_artifact_stops_the_server_with_a_message(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"not onnx")
    result = subprocess.run(
        [sys.executable, "-m", "distracted_driver.serve.server", "--model-dir", str(tmp_path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 1 and "labels.json" in result.stderr


def test_sagemaker_entry_point_reads_the_model_dir_from_the_environment(model, tmp_path):
    env = {**os.environ, "SM_MODEL_DIR": str(model.directory), "SAGEMAKER_BIND_TO_PORT": "0"}
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "serve.py"), "serve", "--host", "127.0.0.1"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        try:
            wait_until(
                lambda: LISTENING.search(log_path.read_text()),
                START_TIMEOUT_S,
                what="the server's port",
                process=proc,
                details=log_path.read_text,
            )
            assert "model server-test-v1" in log_path.read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0


def test_a_slow_or_vanished_client_neither_hangs_nor_leaks(start_server):
    process = start_server("--read-timeout", "0.5")
    process.wait_ready()
    host, port = process.url.removeprefix("http://").split(":")
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 50000\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as slow:
        slow.sendall(head + GOOD[:1000])  # and never the rest
        answer = slow.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 408") and '"RequestTimeout"' in answer
    with socket.create_connection((host, int(port)), timeout=10) as gone:
        gone.sendall(head + GOOD[:1000])
    wait_until(lambda: process_queue_depth(process) == 0, timeout_s=5, what="the vanished client's request gone")
    server_errors = [k for k in process.metrics() if k.startswith('model_requests_total{path="/invocations",status="5')]
    assert not server_errors
    assert invoke(process, GOOD)[0] == 200


def test_serves_the_real_trained_efficientnet(trained_job, tmp_path):
    """The artifact a real training job produced, fetched from its bucket and served as is."""
    from distracted_driver.model.cache import fetch_artifact
    from distracted_driver.model.inference import Classifier

    artifact = fetch_artifact(trained_job.settings, trained_job.job)
    process = ServerProcess(artifact.directory, tmp_path / "server.log")
    try:
        process.wait_ready()
        image = jpeg(40)
        status, headers, answer = invoke(process, image, accept="application/json;verbose=true")
        assert status == 200 and headers["X-Model-Version"] == trained_job.job == answer["model_version"]
        assert sum(answer["probabilities"]) == pytest.approx(1.0, abs=1e-5)
        classifier = Classifier(artifact)
        expected = classifier.predict(classifier.prepare(image)[None])[0]
        assert answer["probabilities"] == pytest.approx(expected.tolist(), abs=1e-5)
    finally:
        assert process.stop() == 0


def test_the_features_output_leaves_the_answers_unchanged(trained_job, tmp_path):
    """A trained model's served file (int8 or fp32) also outputs its features (for monitoring); the same graph
    without that output, as models were exported before, gets byte-identical answers from the model server."""
    import onnx

    from distracted_driver.model.artifact import FEATURES_NAME, load_artifact
    from distracted_driver.model.cache import fetch_artifact

    artifact = fetch_artifact(trained_job.settings, trained_job.job)
    graph = onnx.load(artifact.served_model_path)
    assert [output.name for output in graph.graph.output] == ["probabilities", FEATURES_NAME]
    before = tmp_path / "before"
    shutil.copytree(artifact.directory, before)
    graph.graph.output.pop()
    onnx.save(graph, before / artifact.served_model_path.name)  # the file the server runs, int8 or fp32
    servers = [
        ServerProcess(directory, tmp_path / f"{name}.log")
        for name, directory in (("with", artifact.directory), ("without", before))
    ]
    assert len(onnx.load(load_artifact(before).served_model_path).graph.output) == 1
    try:
        for process in servers:
            process.wait_ready()
        for seed in range(6):
            image = jpeg(seed)
            answers = [request(process.url + "/invocations", image, "image/jpeg")[2] for process in servers]
            assert answers[0] == answers[1] and len(json.loads(answers[0])) == 10
    finally:
        for process in servers:
            assert process.stop() == 0


# --- hostile clients: malformed requests, slow sockets, rotated logs ------------------------


def test_aiohttps_own_refusals_are_json(server):
    for name, raw in malformed_requests("/invocations").items():
        document = json_error(raw_exchange(server.url, raw), 400)
        assert set(document) == {"error", "message"} and document["error"] == "BadRequest", (name, document)
    assert get(server.url + "/ping")[0] == 200


def test_slow_headers_are_closed_while_normal_clients_are_served(start_server):
    process = start_server("--header-timeout", "1")
    process.wait_ready()
    result = slowloris(process.url, lambda: invoke(process, GOOD)[0] == 200, sockets=200, give_up_s=30)
    assert result.closed == 200 and result.longest_held_s < 8, result.closed_after_s
    assert json_error(parse_answer(result.answers[0]), 408)["error"] == "RequestTimeout"
    assert result.normal_ok >= 5 and not result.normal_failed, result.normal_failed[:3]


def test_the_log_file_is_rotated(model, tmp_path):
    log_file = tmp_path / "server.log"
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distracted_driver.serve.server",
            "--model-dir",
            str(model.directory),
            "--port",
            str(port),
            "--header-timeout",
            "0.2",
            "--log-file",
            str(log_file),
            "--log-max-bytes",
            "2048",
            "--log-backups",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: request_status(url + "/ping") == 200, START_TIMEOUT_S, what="the server to come up", process=proc
        )
        for _ in range(60):  # each idle connection closed at the header deadline is one log line
            with socket.create_connection(("127.0.0.1", port), timeout=5) as idle:
                idle.recv(1024)
        rotated = sorted(tmp_path.glob("server.log*"))
        assert [p.name for p in rotated] == ["server.log", "server.log.1", "server.log.2"], rotated
        assert all(p.stat().st_size <= 2048 for p in rotated)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def request_status(url: str) -> int | None:
    try:
        return get(url)[0]
    except OSError:
        return None
