# Set-up is automatic: every target creates .venv on a fresh machine when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO_DIR ?= runs/demo

.PHONY: venv test demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

demo: $(STAMP)
	bash launch/demo.sh $(DEMO_DIR)

bench: $(STAMP)
	$(VENV)/bin/avpretrain bench --config=configs/m2d.py:size=base --config.batch_size=8

clean:
	rm -rf $(VENV) runs
