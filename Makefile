# `make test` and `make demo` work on a fresh clone: they create .venv, install the pinned torch, then the package.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
# braindecode (the published EEG models) without dependency resolution: resolved normally, pip would replace the
# pinned torch (torchaudio's newest release declares torch==2.11.*). torchaudio 2.11.1 imports next to torch 2.14.1;
# the rest is braindecode's pure-Python dependencies (the `published` extra of pyproject.toml lists the same pins).
PUBLISHED_PINS := braindecode==1.8.1 torchaudio==2.11.1 h5py==3.16.0 skorch==1.4.0 tabulate==0.10.0 \
	torchinfo==1.8.0 wfdb==4.3.1 docstring-inheritance==3.0.0 linear-attention-transformer==0.19.1 \
	axial-positional-embedding==0.3.12 linformer==0.2.3 local-attention==1.11.2 product-key-memory==0.3.0 \
	colt5-attention==0.11.2 hyper-connections==0.4.11 torch-einops-utils==0.2.0
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

.PHONY: test demo install clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps $(PUBLISHED_PINS)
	$(PY) -c "import torch, braindecode.models; assert torch.__version__.startswith('2.14.1'), torch.__version__"
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
