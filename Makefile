# Set-up is automatic: every target creates .venv on a fresh machine when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO_DIR ?= runs/demo
DEMO_CLAP_DIR ?= runs/demo_clap

.PHONY: venv test demo demo-clap bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,text]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

demo: $(STAMP)
	bash launch/demo.sh $(DEMO_DIR)

demo-clap: $(STAMP)
	bash launch/demo_clap.sh $(DEMO_CLAP_DIR)

bench: $(STAMP)
	$(VENV)/bin/avpretrain bench --config=configs/m2d.py:size=base --config.batch_size=8

clean:
	rm -rf $(VENV) runs
