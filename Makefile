# Set-up and everyday commands. `make test` and `make demo` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The demo's model: the real one where the hub is reachable; see `demo` below otherwise.
MODEL ?=
DEMO_MODEL_DIR ?= $(HOME)/.cache/zsc-worker/demo-model

.PHONY: install test unit integration demo lint schemas fortunes kafka bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# Real texts for the tests (Debian's fortunes); skipped where apt-get cannot run.
fortunes:
	@test -d /usr/share/games/fortunes || { \
	  command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q fortunes fortunes-de >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q fortunes fortunes-de >/dev/null; }; } \
	  || echo "fortunes not installed: tests that need real texts will skip"; }

# Apache Kafka's jars and Apicurio Registry from Maven Central, fetched once into a cache
# outside the repo.
kafka: $(STAMP)
	@if command -v java >/dev/null && command -v mvn >/dev/null; then $(PY) -m tests.brokers.apache_kafka fetch && $(PY) -m tests.brokers.apicurio fetch; \
	else echo "no java+mvn: integration tests use Docker or the embedded Tansu broker, and schema-registry tests skip"; fi

test: $(STAMP) fortunes kafka
	$(PY) -m pytest -q -rs

unit: $(STAMP)
	$(PY) -m pytest -q -m "not integration"

integration: $(STAMP) fortunes kafka
	$(PY) -m pytest -q -rs -m integration

lint: $(STAMP)
	$(VENV)/bin/ruff check worker schemas config tests bench
	$(VENV)/bin/mypy worker schemas config

schemas: $(STAMP)
	$(PY) -m schemas

# The demo on the embedded broker. With no MODEL it uses the default hub model; where
# the hub cannot be reached it says so, and this falls back to a small randomly
# initialised local model so the pipeline still runs end to end (its scores mean nothing).
demo: $(STAMP) fortunes
ifneq ($(MODEL),)
	$(PY) -m worker demo --model "$(MODEL)"
else
	@$(PY) -m worker demo || { rc=$$?; [ $$rc -eq 3 ] || exit $$rc; \
	  echo "== falling back to a random-weight local model in $(DEMO_MODEL_DIR): scores are meaningless"; \
	  $(PY) -m worker.demo_model --out "$(DEMO_MODEL_DIR)" && \
	  $(PY) -m worker demo --model "$(DEMO_MODEL_DIR)"; }
endif

# The side-by-side benchmark (README "Benchmarks"): the pipeline's baselines, its peers
# (ONNX Runtime, OpenVINO) and the worker through Kafka in one run, ratios printed; about
# 20 minutes on two cores and 10 to 20 more for the peers, `make bench QUICK=1` (4 texts,
# no peers) about 3. The peers run in venvs of their own under ~/.cache/zsc-worker/peers:
# the first run builds them (about 6 GB each, downloaded from PyPI; 5 to 10 minutes).
# The random-weight full-size model is built once into ~/.cache/zsc-worker.
# BENCH_OUT=DIR also saves the report (markdown and JSON) there.
QUICK ?=
BENCH_OUT ?=
bench: $(STAMP) fortunes kafka
	$(PY) -m bench $(if $(QUICK),--quick) $(if $(BENCH_OUT),--out "$(BENCH_OUT)")

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
