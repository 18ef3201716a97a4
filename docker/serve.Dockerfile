# The model server as SageMaker hosting runs it: `docker run <image> serve`, port 8080,
# the model's model.tar.gz unpacked into /opt/ml/model (scripts/serve.py).
# Only the serving core is installed (ONNX Runtime, OpenCV, numpy, aiohttp): no torch. The model
# server loads the artifact's served file (serving.json: int8 or fp32), as the gate scored it.
#
#   docker build -f docker/serve.Dockerfile -t <repository>:<tag> .   (inv infra.push-image)
FROM public.ecr.aws/docker/library/python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/program
COPY pyproject.toml README.md docker/serve-constraints.txt ./
COPY src ./src
# The same ONNX Runtime, OpenCV, simplejpeg and numpy builds as the gate's environment (make install).
RUN pip install -c serve-constraints.txt . && rm -rf src
COPY scripts/serve.py ./serve.py

EXPOSE 8080
ENTRYPOINT ["python", "/opt/program/serve.py"]
