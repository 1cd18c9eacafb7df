# FLIP at corpus scale. `make demo` runs all three stages on the embedded default;
# `make test` runs the test suite. Both set themselves up first.

PYTHON_BASE ?= python3
VENV := .venv
PY := $(abspath $(VENV))/bin/python
STAMP := $(VENV)/.installed

MODEL ?= flip_tiny
PIPELINE_CONFIG ?= configs/pipeline/demo.yaml
TRAIN_CONFIG ?= configs/train/$(MODEL).yaml
SUITE ?= demo
EVAL_CONFIG ?= configs/eval/$(SUITE).yaml
CHECKPOINT ?=
# FULL=1: every arm of the experiment (about 3 hours, estimated) instead of the default four
EXPERIMENT_CONFIG ?= configs/experiment/$(if $(FULL),flip_vs_clip_full,flip_vs_clip).yaml
EXPLORE_CONFIG ?= configs/explore/demo.yaml
ARGS ?=
# training processes on this machine: one per GPU torch can see (CUDA_VISIBLE_DEVICES counts),
# one on a CPU-only machine; only `make train NPROC=…` changes it, not an NPROC in the shell
ifneq ($(origin NPROC),command line)
NPROC = $(shell $(PY) -c "import torch; print(max(torch.cuda.device_count(), 1))" 2>/dev/null || echo 1)
endif

export NO_ALBUMENTATIONS_UPDATE := 1
export SPARK_LOCAL_IP := 127.0.0.1
export PYSPARK_PYTHON := $(PY)
export PYSPARK_DRIVER_PYTHON := $(PY)
export PYTHONUNBUFFERED := 1

# The demo, the experiment, the rehearsal and the tests must never reach a model hub (they use
# random-init models and installed data); the stages run by hand are left to the user's setting.
demo experiment explore cluster-demo test test-fast: export HF_HUB_OFFLINE := 1

.PHONY: setup python-env system-packages shards train eval demo experiment explore cluster-demo test test-fast lint manifests clean help

help:
	@echo "make demo              shards -> train -> eval on the embedded demo corpus"
	@echo "make test              run the test suite (installs first)"
	@echo "make shards            build the shard set      (PIPELINE_CONFIG=$(PIPELINE_CONFIG))"
	@echo "make train MODEL=...   train a FLIP model        (configs/train/MODEL.yaml)"
	@echo "make eval              evaluate a checkpoint on a suite (SUITE=demo CHECKPOINT=newest)"
	@echo "make experiment        FLIP vs CLIP at equal training compute, 4 arms x 3 seeds (~75 min)"
	@echo "make experiment FULL=1 the same with all 8 arms (~3 h on 2 cores, estimated)"
	@echo "make explore           search the demo shard set by text in a browser (clip-retrieval)"
	@echo "make manifests         render infra/generated/ from infra/deploy.yaml"
	@echo "make cluster-demo      rehearse the cloud jobs here (standalone Spark, torchrun x2)"
	@echo "extra key=value overrides go in ARGS='...'"

# the demo and the tests need the Debian packages below; running a stage needs only Python
setup: system-packages python-env

python-env: $(STAMP)

system-packages:
	@bash infra/install_system_packages.sh $(SYSTEM_PACKAGE_EXTRAS)

# the tests also drive a headless browser (the explorer's front end)
test test-fast: SYSTEM_PACKAGE_EXTRAS := --browser

# Re-installs only when the dependency pins change.
$(STAMP): pyproject.toml requirements.lock
	test -x $(VENV)/bin/python || $(PYTHON_BASE) -m venv $(VENV)
	$(VENV)/bin/pip install -q "pip==25.0.1"
	$(VENV)/bin/pip install -c requirements.lock -e ".[dev]"
	# animal-mnist declares TensorFlow as a dependency but its data needs none of it.
	$(VENV)/bin/pip install -q --no-deps animal-mnist==0.4
	touch $(STAMP)

shards: python-env
	$(PY) -m pipeline $(PIPELINE_CONFIG) $(ARGS)

# torchrun on every local GPU (NPROC= to choose): one process per GPU, FSDP/DDP across them.
# SIGTERM (kill, a scheduler) checkpoints and exits 75; torchrun gives the ranks 10 minutes.
train: python-env
	$(PY) -m torch.distributed.run --standalone --nproc-per-node=$(NPROC) --shutdown-timeout=600 \
		-m training $(TRAIN_CONFIG) $(ARGS)

eval: python-env
	$(PY) -m evaluation $(EVAL_CONFIG) $(if $(CHECKPOINT),checkpoint=$(CHECKPOINT)) $(ARGS)

demo: setup
	@start=$$(date +%s); \
	$(PY) -m pipeline $(PIPELINE_CONFIG) && t1=$$(date +%s) && \
	$(PY) -m training configs/train/flip_tiny.yaml && t2=$$(date +%s) && \
	$(PY) -m evaluation $(EVAL_CONFIG) && t3=$$(date +%s) && \
	echo "demo wall time: shards $$((t1-start)) s, train $$((t2-t1)) s, eval $$((t3-t2)) s"

# FLIP vs CLIP at equal training compute on the demo shard set (built first if missing; the
# pipeline stage returns at once when its shard set is complete).
experiment: setup
	$(PY) -m pipeline $(PIPELINE_CONFIG)
	$(PY) -m experiment $(EXPERIMENT_CONFIG) $(ARGS)

# The shard set searchable by text in a browser (clip-retrieval's inference, index, back and
# front ends), with the demo run's newest checkpoint; serves until Ctrl-C.
explore: setup
	$(PY) -m explore $(EXPLORE_CONFIG) $(ARGS)

# The cloud jobs' own commands on this machine: standalone Spark, 2-process torchrun, eval array.
cluster-demo: setup
	$(PY) infra/cluster_demo.py $(ARGS)

test: setup
	$(PY) -m pytest -q $(ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(ARGS)

# Cloud-job files (Kubernetes, SLURM, AWS Batch, EMR) rendered from infra/deploy.yaml.
manifests: setup
	$(PY) -m infra.render

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf runs spark-warehouse metastore_db derby.log
