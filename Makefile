# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DB ?= data/outcomes.duckdb
DEMO_PATIENTS ?= 300
PORT ?= 8501
# The dashboard listens on this machine only; see docs/security.md to serve it to others over TLS.
ADDRESS ?= 127.0.0.1

.PHONY: run test demo bench validate-durability clean-venv

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
	OUTCOMES_DB=$(DB) $(VENV)/bin/streamlit run serve.py --server.address $(ADDRESS) --server.port $(PORT)

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed
	$(PY) -m analytics bench --sizes 1000,10000,100000 --out bench/results.json

# Durability engine against simulated clinics with known truth (docs/durability.md quotes the
# table it prints); about 10 minutes, so not part of `make test`.
validate-durability: $(VENV)/.installed
	$(PY) tests/validation/durability.py --patients 2000 --seed 3

clean-venv:
	rm -rf $(VENV)
