"""The Lambda zips: the handler's zip carries the package modules it imports, and runs from the zip alone.

The zip is unpacked and its handler started in a fresh interpreter that may import only the
standard library, boto3 and what the zip holds (what a Lambda's Python runtime offers); it
answers real requests against a loopback stand-in for SageMaker Runtime.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from distracted_driver.data.layout import CLASSES
from distracted_driver.data.payload import INVOKE_ENDPOINT_MAX_BYTES
from distracted_driver.infra.terraform import LambdaPackageError, bundled_modules, package_lambdas

REPO = Path(__file__).resolve().parents[1]
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9"  # only forwarded, never decoded here
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
PROBABILITIES = {name: 0.6 if name == "c2" else 0.4 / 9 for name in CLASSES}

# Run inside the unpacked zip: a finder refuses every import Lambda's runtime could not satisfy.
RUN_FROM_ZIP = r"""
import importlib.abc, json, os, sys
root, events = sys.argv[1], json.loads(sys.stdin.read())
RUNTIME = {"boto3", "botocore", "jmespath", "dateutil", "urllib3", "s3transfer", "six"}

class OnlyTheRuntime(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        in_zip = os.path.exists(os.path.join(root, top + ".py")) or os.path.isdir(os.path.join(root, top))
        if top in sys.stdlib_module_names or top in RUNTIME or in_zip:
            return None
        raise ImportError(f"{name} is not in a Lambda runtime")

sys.meta_path.insert(0, OnlyTheRuntime())
sys.path.insert(0, root)
import handler, distracted_driver
assert distracted_driver.__file__.startswith(root), distracted_driver.__file__
print(json.dumps([handler.handler(event, None) for event in events]))
"""


@pytest.fixture
def sagemaker_runtime():
    """A loopback stand-in for InvokeEndpoint: answers a verbose prediction, records each Content-Type."""
    seen = []

    class Endpoint(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.path, self.headers["Content-Type"]))
            body = json.dumps({"class": "c2", "probabilities": PROBABILITIES, "model_version": "dd-7"})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()
    thread.join(5)


def proxy_event(body: bytes, content_type: str) -> dict:
    return {
        "httpMethod": "POST",
        "path": "/predict",
        "headers": {"Content-Type": content_type},
        "requestContext": {"requestId": "r-1"},
        "isBase64Encoded": True,
        "body": base64.b64encode(body).decode(),
    }


def test_handler_zip_holds_the_package_modules_it_imports(tmp_path):
    packages = package_lambdas(tmp_path / "terraform", REPO / "lambda")
    with zipfile.ZipFile(packages["handler"]) as archive:
        assert sorted(archive.namelist()) == [
            "distracted_driver/__init__.py",
            "distracted_driver/data/__init__.py",
            "distracted_driver/data/layout.py",
            "distracted_driver/data/payload.py",
            "handler.py",
        ]
    with zipfile.ZipFile(packages["trigger"]) as archive:
        assert archive.namelist() == ["trigger.py"]
    first = packages["handler"].read_bytes()
    assert package_lambdas(tmp_path / "terraform", REPO / "lambda")["handler"].read_bytes() == first  # reproducible


def test_a_lambda_importing_what_the_runtime_lacks_is_refused(tmp_path):
    (tmp_path / "handler.py").write_text("import boto3\nfrom distracted_driver.data.imaging import decode_image\n")
    with pytest.raises(LambdaPackageError, match="cv2|numpy|simplejpeg"):
        bundled_modules(tmp_path / "handler.py")
    (tmp_path / "handler.py").write_text("import requests\n")
    with pytest.raises(LambdaPackageError, match="requests"):
        bundled_modules(tmp_path / "handler.py")


@pytest.mark.slow
def test_handler_runs_from_its_zip_alone(tmp_path, sagemaker_runtime):
    url, seen = sagemaker_runtime
    with zipfile.ZipFile(package_lambdas(tmp_path / "terraform", REPO / "lambda")["handler"]) as archive:
        archive.extractall(tmp_path / "unpacked")
    json_png = json.dumps({"base64Image": base64.b64encode(PNG).decode()}).encode()
    events = [
        proxy_event(JPEG, "image/jpeg"),
        proxy_event(json_png, "application/json"),
        proxy_event(b"\xff" * (INVOKE_ENDPOINT_MAX_BYTES + 1), "image/jpeg"),
    ]
    env = {
        "ENDPOINT_NAME": "dd-test",
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "MAX_ATTEMPTS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-I", "-c", RUN_FROM_ZIP, str(tmp_path / "unpacked")],
        env=env,
        input=json.dumps(events),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    jpeg, png, too_large = json.loads(done.stdout.splitlines()[-1])
    assert jpeg["statusCode"] == 200 and json.loads(jpeg["body"])["label"] == "talking on the phone - right"
    assert png["statusCode"] == 200
    assert [content_type for _, content_type in seen] == ["image/jpeg", "image/png"]  # the JSON body's PNG sniffed
    assert too_large["statusCode"] == 413 and str(INVOKE_ENDPOINT_MAX_BYTES) in too_large["body"]
