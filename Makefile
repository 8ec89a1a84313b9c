# The two commands a newcomer needs are `make run` and `make test`; both set themselves up from
# nothing but Python and the package registries.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
LOCK   := requirements.lock
PIP    := python -m pip --disable-pip-version-check
# The tools that write the lock and the SBOM live apart from .venv, so neither is in the SBOM.
TOOLS       := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed-stamp

.PHONY: setup run lint test chaos full bench demo fleet clean tools lock sbom

# Every dependency, the test and python-guest extras' included, comes from the lock with its sha256
# (pip refuses a file whose hash is not listed); the project itself then installs without resolving
# anything (--no-deps), built by the locked setuptools (--no-build-isolation). `pip check` fails
# when pyproject.toml needs something the lock lacks (run `make lock`).
# $(call install_venv,PYTHON,VENV)
define install_venv
	$(1) -m venv $(2)
	$(2)/bin/$(PIP) install --quiet --require-hashes -r $(LOCK)
	$(2)/bin/$(PIP) install --quiet --no-deps --no-build-isolation -e .
	$(2)/bin/$(PIP) check
	touch $(2)/.installed-stamp
endef

$(STAMP): pyproject.toml $(LOCK)
	$(call install_venv,$(PYTHON),$(VENV))

# The suite on Python 3.12+ (mitmproxy 12 by the lock's markers), in a venv of its own: `make test312`.
PYTHON312 ?= python3.12
VENV312   := .venv312
STAMP312  := $(VENV312)/.installed-stamp

$(STAMP312): pyproject.toml $(LOCK)
	$(call install_venv,$(PYTHON312),$(VENV312))

setup: $(STAMP)

$(TOOLS_STAMP):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/$(PIP) install --quiet 'uv>=0.13,<0.14' 'cyclonedx-bom>=7,<8'
	touch $(TOOLS_STAMP)

## Refresh requirements.lock from pyproject.toml (dependencies, every extra, and the build system's
## setuptools): one universal resolution (Python 3.11 and later, every platform; markers pick
## mitmproxy 11 on 3.11 and 12 on 3.12+) with the sha256 of every wheel and sdist of each pinned
## version. Run it after changing dependencies in pyproject.toml, and commit both files.
lock: $(TOOLS_STAMP)
	$(PYTHON) -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires'], sep='\n')" \
	  | $(TOOLS)/bin/uv pip compile pyproject.toml - --all-extras --universal --python-version 3.11 \
	      --generate-hashes --custom-compile-command 'make lock' --quiet --output-file $(LOCK)

## A CycloneDX SBOM (JSON, spec 1.6) of everything installed in .venv: sbom.cdx.json.
sbom: setup $(TOOLS_STAMP)
	$(TOOLS)/bin/cyclonedx-py environment --pyproject pyproject.toml --output-format JSON --output-reproducible \
	  --output-file sbom.cdx.json $(BIN)/python

## Start the gateway on its embedded defaults (proxy 127.0.0.1:8080, API 127.0.0.1:8081).
run: setup
	$(BIN)/egress-gateway run $(ARGS)

## ruff (lint and import order) and mypy (types, every def annotated), configured in pyproject.toml.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

## Lint, then the whole test suite, against real gateway processes and fake vendors over real TLS.
## The chaos suite runs in its CI form: its longest cases (marked chaos_full) are left to `make chaos`.
test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not chaos_full" $(ARGS)

## The same suite on Python 3.12+ and mitmproxy 12 (PYTHON312=/path/to/python3.12 if it is not on
## PATH), from .venv312 built from the same lock; ARGS narrows it, e.g. ARGS=tests/proxy. Lint stays
## with `make test`: one configuration of mypy and ruff (Python 3.11) is the project's.
.PHONY: test312
test312: $(STAMP312)
	$(VENV312)/bin/python -m pytest -q -p no:cacheprovider -m "not chaos_full" $(ARGS)

## Every fault of the chaos suite (tests/chaos), then its table: fault, expected, observed, result,
## and the totals (requests sent, refused, succeeded, leaked, lost audit records); with it, the
## availability cases that live beside the code they test (one agent against the others), then the
## long cases of the other suites (marked chaos_full: workers killed again and again, the HAProxy
## fleet, a stuck SIEM, each kill-switch scope through its second door).
AVAILABILITY := tests/proxy/test_admission.py::test_six_large_bodies_at_once_barely_grow_the_gateway \
	tests/policy/test_policies.py::test_approval_floods_are_rate_limited_and_capped_per_agent
chaos: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/chaos $(AVAILABILITY) $(ARGS)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m chaos_full --ignore=tests/chaos tests $(ARGS)

## Every test, the long ones (chaos_full) included: `make test` and `make chaos` together.
full: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider $(ARGS)

## Throughput and latency ratios against direct and bare-mitmproxy baselines, measured in one run.
bench: setup
	$(BIN)/python -m bench.proxy_bench $(ARGS)

## A scripted agent against local fake vendors, printing each decision.
demo: setup
	$(BIN)/python -m tests.demo

## A real local fleet: redis-server, two replicas of two workers each, HAProxy (Debian: haproxy) in
## front of both ports; the demo agent runs through it (ARGS=--hold keeps the fleet up afterwards).
fleet: setup
	$(BIN)/python -m tests.fleet.local $(ARGS)

## Rebuild the sample tools: the C ones in place (Debian: clang lld wasi-libc libclang-rt-dev-wasm32),
## the Python ones (componentize-py) into the state dir's tools/ (STATE_DIR=..., default the config's).
tools: setup
	sandbox/tools/build.sh
	$(BIN)/python -m sandbox.build --out $(or $(STATE_DIR),$(HOME)/.egress-gateway)/tools sandbox/tools/py_*

clean:
	rm -rf $(VENV) $(VENV312) $(TOOLS) .pytest_cache sbom.cdx.json
