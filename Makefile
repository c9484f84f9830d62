# Set-up is automatic: every target creates .venv on a fresh machine when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO_DIR ?= runs/demo
DEMO_CLAP_DIR ?= runs/demo_clap
DEMO_AV_DIR ?= runs/demo_av
DEMO_EMOTION_DIR ?= runs/demo_emotion
DEMO_EMOTION_XCORPUS_DIR ?= runs/demo_emotion_xcorpus

.PHONY: venv test demo demo-clap demo-av demo-emotion demo-emotion-xcorpus bench bench-reference clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,text,beam]'
	$(PY) -m pip install -q --no-deps -c constraints.txt --target $(VENV)/libtpu libtpu
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

demo: $(STAMP)
	bash launch/demo.sh $(DEMO_DIR)

demo-clap: $(STAMP)
	bash launch/demo_clap.sh $(DEMO_CLAP_DIR)

demo-av: $(STAMP)
	bash launch/demo_av.sh $(DEMO_AV_DIR)

demo-emotion: $(STAMP)
	bash launch/demo_emotion.sh $(DEMO_EMOTION_DIR)

demo-emotion-xcorpus: $(STAMP)
	bash launch/demo_emotion_xcorpus.sh $(DEMO_EMOTION_XCORPUS_DIR)

bench: $(STAMP)
	$(VENV)/bin/avpretrain bench --config=configs/m2d.py:size=base --config.batch_size=8

# The official PyTorch M2D step vs ours, pair by pair: M2D_DIR=<nttcslab/m2d checkout, set up per its
# README> M2D_DEPS=<pip install --target DIR timm==0.4.5> (README, Benchmark).
bench-reference: $(STAMP)
	@test -n "$(M2D_DIR)" || { echo "error: set M2D_DIR=<checkout of nttcslab/m2d> (README, Benchmark)" >&2; exit 2; }
	$(PY) benchmarks/m2d_reference.py --m2d-dir "$(M2D_DIR)" $(if $(M2D_DEPS),--ref-pythonpath "$(M2D_DEPS)") --size base --batch 8 --pairs 3 --order alternate

clean:
	rm -rf $(VENV) runs
