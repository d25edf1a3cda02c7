# `make test` and `make demo` work on a fresh clone: they create .venv, install the pinned torch, then the package.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

.PHONY: test demo install clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# Pretrains each modality's tiny recipe on its generated demo corpus with 2 DeepSpeed ranks (CPU: gloo),
# exports it and prints where the checkpoint, curves and model card are. Demo corpora are generated on first use
# under runs/cache/.
DEMO_RECIPES ?= deeperbrain-tiny slim-brain-tiny ultrasound-mtl-tiny
demo: $(STAMP)
	@for recipe in $(DEMO_RECIPES); do \
		echo "== $$recipe"; \
		PYTHONPATH=$(CURDIR) $(VENV)/bin/deepspeed --num_gpus 2 pretrain.py \
			--recipe $$recipe --output-dir $(DEMO_DIR)/$$recipe --overwrite || exit 1; \
	done

clean:
	rm -rf runs build *.egg-info
