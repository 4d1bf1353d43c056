# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned here (a CPU build); the package itself only asks for torch>=2.4.
TORCH ?= torch==2.13.0

.PHONY: demo test docs bench bench-publish calibration gpu-check gpu-wheels env clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# The cluster backends' engines (Ray ~300 MB, submitit), the trackers (wandb, mlflow) and
# lm-evaluation-harness are extras: the tests need them, the demo does not; so is mkdocs (`make docs`).
$(VENV)/.extras: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test,ray,slurm,track,lm_eval,docs]"
	touch $@

env: $(VENV)/.installed

demo: env
	$(PY) scripts/build_demo_corpora.py --out demo/data --cache demo/cache
	$(VENV)/bin/mixopt sample mixtures/demo.yaml
	$(VENV)/bin/mixopt sweep mixtures/demo.yaml --workers 2
	$(VENV)/bin/mixopt fit mixtures/demo.yaml

# Two test processes (pytest-xdist) by default: CI has 2 cores. TEST_WORKERS=0 runs them in this process,
# one at a time; more on a bigger machine (each process builds the session's shared fixtures once).
TEST_WORKERS ?= 2
test: $(VENV)/.extras
	$(PY) -m pytest -q -n $(TEST_WORKERS)

# The docs site (mkdocs.yml, docs/) into site/, offline, warnings as errors; docs/hooks.py generates the
# config, CLI and module references and the benchmark tables at build time.
docs: $(VENV)/.extras
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# Benchmarks are scripts, not timed tests; each prints JSON and writes it under bench/results/.
# bench/reeval.py measures against the demo's sweep, so `bench` runs the demo first (a no-op once done);
# bench/gpu_check.sh skips with one line where there is no CUDA GPU.
bench: demo
	$(PY) bench/reeval.py --config mixtures/demo.yaml --workers 2
	$(PY) bench/fit_regmix.py
	$(PY) bench/fit_honesty.py
	$(PY) bench/trainer.py
	$(PY) bench/sample.py
	$(PY) bench/domains.py
	$(PY) bench/data_change.py --config mixtures/demo.yaml --workers 2
	$(PY) bench/fidelity.py --workers 2
	PYTHON=$(PY) bench/gpu_check.sh --out bench/results/gpu

# Copy this checkout's bench/results/*.json into docs/results/ (committed: the benchmarks page renders its
# tables from them), each stamped with its date and command: `make bench-publish ARGS="--command '...'"`.
bench-publish: env
	$(PY) bench/publish.py bench/results/*.json $(ARGS)

# Issue 21: do the fit's 90% intervals cover what 3 seeds measure, and is "better" ever wrong? 9 sweeps
# (3 sets of real-text domains from this machine x 24k/48k tokens per proxy x 3 design seeds) and 27
# fit + `verify --seeds 3` checks; writes bench/results/calibration.json. 16.5 min on 2 CPU cores (26.5 on a busier machine), so
# not part of `bench`. Resumable: a rerun reuses finished sweeps and checks (add ARGS=--fresh to redo).
calibration: env
	$(PY) bench/calibration.py --workers 2 $(ARGS)

# On a machine with a CUDA GPU, as it is (its python3 and CUDA torch; no registry needed: `make
# gpu-wheels` first, here, packs what such a machine lacks into .whl/): the `gpu` tests, the trainer
# batched vs one at a time at two sizes with MFU and peak memory, a 16-run sweep with a re-evaluation,
# Ray's device visibility, then (on what time is left) bench/fidelity.py --quick at 5m/30m; one
# deadline (480 s), every figure written as it goes into $OUT (else
# bench/results/gpu/), summary.txt at the end. Without a GPU: one line, and skips. ARGS=--rehearse
# runs the same steps small on the CPU (tests/test_gpu_check.py does).
gpu-check:
	bench/gpu_check.sh $(ARGS)

# The Python 3.12 wheels (manylinux x86-64) of what mixopt imports and a lent GPU machine's image
# lacks (its package list: /work/.library/device/KINDS.md), at this venv's versions: ~13 MB.
GPU_WHEELS := pydantic pydantic-core annotated-types typing-inspection zstandard lightgbm datasets dill multiprocess
gpu-wheels: env
	grep -qx '/.whl/' "$$(git rev-parse --git-path info/exclude)" || echo '/.whl/' >> "$$(git rev-parse --git-path info/exclude)"
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any -d .whl \
	  $$(for p in $(GPU_WHEELS); do echo "$$p==$$($(PY) -m pip show $$p | sed -n 's/^Version: //p')"; done)

clean:
	rm -rf workspaces demo/data mixtures/*.optimal.yaml site
