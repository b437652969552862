# Every target runs inside the project's virtual environment (.venv), made by `make install`.
PY      ?= .venv/bin/python
PORT    ?= 5000
STORE   ?= sqlite:///$(CURDIR)/mlruns/mlflow.db
ARGS    ?=
RUN     ?=
SOURCE  ?= $(HIGGS_PATH)
HOST    ?= 127.0.0.1
DB      ?=
DBPORT  ?= 5433
ARTIFACTS ?= $(CURDIR)/mlruns/artifacts
TO      ?=

.PHONY: install data train sweep search ui server db db-stop migrate test test-slow lint docs docs-serve reproduce compare bench clean

install:  ## create .venv and install the project with its test tools
	python3 -m venv .venv
	.venv/bin/pip install --upgrade pip
	.venv/bin/pip install -e '.[test]'
	.venv/bin/python -c 'import matplotlib.font_manager'  # its font cache, once (~3 s), not in the first run's figures

data:  ## ingest a HIGGS file (a path or a URL) into the cache training reads: make data SOURCE=<path or URL>
	$(PY) -m src.data $(SOURCE) $(ARGS)

train:  ## one run with the defaults (large model, reg=none, loop=fit); add overrides with ARGS="..."
	$(PY) -m src.train $(ARGS)

sweep:  ## the article's comparison: every combination of reg={none,l2} x loop={fit,tape}
	$(PY) -m src.train -m reg=none,l2 loop=fit,tape $(ARGS)

search:  ## a hyperparameter search with Optuna over reg.l2 (log scale); add e.g. ARGS="hydra.sweeper.n_trials=20"
	$(PY) -m src.train -m hydra/sweeper=optuna 'reg.l2=tag(log, interval(1e-5, 1e-2))' reg=l2 $(ARGS)

# The UI and the server run without MLflow's job-execution workers (unused here; they take ~2 GB and ~20 s
# to start) and without its usage telemetry, under gunicorn: MLflow's default uvicorn answers each request on a
# kept-alive connection ~45 ms late here (log_batch 68 ms against 23 ms; see README, "A tracking server").
MLFLOW_ENV = MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true
MLFLOW_HTTP = --gunicorn-opts "--timeout 120 --graceful-timeout 5"

ui:  ## MLflow's UI on http://127.0.0.1:$(PORT) over the project's store
	$(MLFLOW_ENV) $(PY) -m mlflow ui --backend-store-uri $(STORE) --host 127.0.0.1 --port $(PORT) --workers 2 $(MLFLOW_HTTP)

server:  ## an MLflow tracking server on $(HOST):$(PORT) over $(DB) (else the project's store); artifacts served through it
	$(MLFLOW_ENV) $(PY) -m mlflow server --backend-store-uri $(or $(DB),$(STORE)) --host $(HOST) --port $(PORT) \
		--serve-artifacts --artifacts-destination $(ARTIFACTS) $(MLFLOW_HTTP)

db:  ## a local PostgreSQL cluster (.cache/postgres, 127.0.0.1:$(DBPORT)) with databases mlflow and optuna; prints their URIs
	$(PY) -m src.db start --port $(DBPORT)

db-stop:  ## stop the local PostgreSQL cluster (its data stays)
	$(PY) -m src.db stop --port $(DBPORT)

migrate:  ## copy the runs of the project's store into a tracking server: make migrate TO=http://127.0.0.1:5000
	$(PY) -m src.migrate --from $(STORE) --to $(TO) $(ARGS)

test:  ## the default test suite: about 2 minutes on 2 cores (two pytest-xdist workers that take tests from each other when idle)
	$(PY) -m pytest -m "not slow" -n 2 --dist worksteal

test-slow:  ## the long tests: 5-epoch parity, parallel sweeps, 2 replicas, store and server faults, a real mlflow server
	$(PY) -m pytest -m slow

lint:  ## the layer contract: imports only go down the layers declared in pyproject.toml (import-linter)
	.venv/bin/lint-imports

docs:  ## build the docs site into site/ (strict: a broken link or a missing page fails)
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict

docs-serve:  ## preview the docs site on http://127.0.0.1:8000
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs serve

reproduce:  ## rerun a logged run exactly: make reproduce RUN=<run id>
	$(PY) -m src.reproduce $(RUN) $(ARGS)

compare:  ## figures and table for the latest sweep (or ARGS="<parent run id>")
	$(PY) -m src.compare $(ARGS)

bench:  ## speed of both loops against the machine's matmul rate
	$(PY) -m src.bench $(ARGS)

clean:  ## remove Hydra's output folders (keeps the MLflow store)
	rm -rf outputs multirun
