# One command each: `make test` and `make demo` bootstrap .venv by themselves on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
EXTRAS ?= airflow,tensorflow,gcs,test,celery,kubernetes

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install test test-long test-stack lint typecheck demo up down stack stack-down stack-demo bench bench-against clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv
	$(VENV)/bin/uv pip install --compile-bytecode --python $(PY) -e ".[$(EXTRAS)]"
	@touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check airflow_tf_ckpt dags tests bench scripts
	$(VENV)/bin/ruff format --check airflow_tf_ckpt dags tests bench scripts
	$(VENV)/bin/mypy

# The type check alone (it also runs in `make lint`, so in `make test` and CI).
typecheck: install
	$(VENV)/bin/mypy

test: install lint
	$(PY) -m pytest

test-long: install
	$(PY) -m pytest -m long -s

# The Celery stack test alone (part of test-long; the second step of .ci/run).
test-stack: install
	$(PY) -m pytest tests/test_celery_stack.py -m long -s

# The main job: the core demo (tf-ckpt on real checkpoints), then the Airflow demo: a real
# scheduler, dag-processor, triggerer and api-server (LocalExecutor, SQLite, all on 127.0.0.1) run
# the example DAGs, driven through the REST API; about 5 minutes on 2 cores.
demo: install
	$(PY) scripts/demo.py
	$(PY) scripts/airflow_demo.py

# The same deployment, left running (prints the URL, user and password); `make down` stops it.
up: install
	$(PY) scripts/airflow_up.py up

down:
	$(PY) scripts/airflow_up.py down

# A CeleryExecutor deployment on 127.0.0.1 (scripts/stack.py): Postgres and Redis (Debian packages,
# apt-installed once as root when missing), api-server, scheduler, dag-processor, triggerer, a
# default-queue worker and a gpu-queue worker. `make stack` leaves it running, `make stack-down`
# stops it, `make stack-demo` runs the example DAGs on it with the routing and exactly-once checks.
stack: install
	$(PY) scripts/stack.py up

stack-down:
	$(PY) scripts/stack.py down

stack-demo: install
	$(PY) scripts/stack.py demo

bench: install
	@rc=0; for b in bench/[!_]*.py; do echo "== $$b"; $(PY) $$b || { echo "!! $$b exited non-zero"; rc=1; }; done; exit $$rc

# The benches here and at an earlier revision, alternately in one session, figure by figure
# (scripts/bench_against.py): `make bench-against REF=<commit>`; BENCH_ARGS adds its options.
bench-against: install
	$(PY) scripts/bench_against.py --ref $(REF) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo_output .pytest_cache .ruff_cache
