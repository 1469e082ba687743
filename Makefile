# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DB ?= data/outcomes.duckdb
DEMO_PATIENTS ?= 300
PORT ?= 8501
# make run-network: the second dashboard server
PORT2 ?= 8502
# The dashboard listens on this machine only; see docs/security.md to serve it to others over TLS.
ADDRESS ?= 127.0.0.1

.PHONY: run run-network test demo bench bench-network validate-durability clean-venv

$(VENV)/.installed: requirements.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	touch $@

$(DB): | $(VENV)/.installed
	$(PY) -m analytics demo --db $(DB) --patients $(DEMO_PATIENTS) --seed 7
	$(PY) -m analytics users demo-accounts --db $(DB)

demo: $(VENV)/.installed
	rm -f $(DB) $(DB).wal
	$(PY) -m analytics demo --db $(DB) --patients $(DEMO_PATIENTS) --seed 7
	$(PY) -m analytics users demo-accounts --db $(DB)

run: $(VENV)/.installed $(DB)
	OUTCOMES_DB=$(DB) $(PY) -m analytics serve --address $(ADDRESS) --port $(PORT)

# A clinic network on this machine (docs/deployment.md): a throwaway PostgreSQL cluster (tools/pgcluster.py),
# the demo clinic and its demo accounts in it, and two dashboard servers on it (ports $(PORT) and $(PORT2): 8501 and 8502),
# each `python -m analytics serve` as on a server of a network, sharing one cookie secret (docs/deployment.md).
# Ctrl-C stops the servers, then the cluster, whose folder is removed. Needs `apt-get install -y postgresql`.
run-network: $(VENV)/.installed
	$(PY) tools/pgcluster.py run --env OUTCOMES_DB -- sh -c '\
	  $(PY) -m analytics demo --db "$$OUTCOMES_DB" --patients $(DEMO_PATIENTS) --seed 7 && \
	  $(PY) -m analytics users demo-accounts --db "$$OUTCOMES_DB" && \
	  export STREAMLIT_SERVER_COOKIE_SECRET=$$($(PY) -c "import secrets; print(secrets.token_hex(32))") && \
	  { $(PY) -m analytics serve --db "$$OUTCOMES_DB" --address $(ADDRESS) --port $(PORT) & one=$$!; \
	    $(PY) -m analytics serve --db "$$OUTCOMES_DB" --address $(ADDRESS) --port $(PORT2) & two=$$!; \
	    trap "kill $$one $$two 2>/dev/null" INT TERM; wait; wait; }'

# Two worker processes (pytest-xdist), each taking whole test files, the server and browser files first
# (tests/conftest.py); TEST_WORKERS=0 runs the suite in one process. docs/architecture.md "Running the tests".
TEST_WORKERS ?= 2
test: $(VENV)/.installed
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

bench: $(VENV)/.installed bench-network
	$(PY) -m analytics bench --sizes 1000,10000,100000 --users 20 --out bench/results.json
	$(PY) -m analytics bench --table bench/results.json --readme README.md
	$(PY) -m analytics bench --table bench/results.json --beside bench/results-postgres.json

# The same figures at 10,000 patients on PostgreSQL (a throwaway cluster), beside the DuckDB file's in
# bench/results.json: bench/results-postgres.json (docs/deployment.md). --durable: fsync on, as a real server's.
bench-network: $(VENV)/.installed
	$(PY) tools/pgcluster.py run --durable --env OUTCOMES_DB -- sh -c '\
	  $(PY) -m analytics bench --patients 10000 --db "$$OUTCOMES_DB" --out bench/results-postgres.json'

# Durability engine against simulated clinics with known truth (docs/durability.md quotes the
# table it prints); about 10 minutes, so not part of `make test`.
validate-durability: $(VENV)/.installed
	$(PY) tests/validation/durability.py --patients 2000 --seed 3

clean-venv:
	rm -rf $(VENV)
