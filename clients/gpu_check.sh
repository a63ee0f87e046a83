#!/usr/bin/env bash
# The GPU path end to end, every command once, in a few minutes: offline eval on vLLM (CUDA), shortest (TRL in
# bf16, full weights and as a LoRA adapter), one RL iteration (trainer and engine sharing the GPU), `l2s serve`
# answering the openai client for the RL variant and for the adapter on the base's engine (vLLM's CUDA LoRA
# kernels).
#
#   MODEL=deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B TASK=hf:openai/gsm8k:main clients/gpu_check.sh OUT_DIR
#
# MODEL: a model directory or a hub id in the local Hugging Face cache (default: the lab's lab-long, which needs
# no network). TASK: any task spec (default: the lab). Figures land in OUT_DIR/summary.txt.
set -euo pipefail
OUT=${1:-runs/gpu-check}
MODEL=${MODEL:-models/lab-long}
TASK=${TASK:-lab}
N=${N:-32}
MAX_TOKENS=${MAX_TOKENS:-1024}
INSTRUCTION=${INSTRUCTION:-}
L2S=${L2S:-.venv/bin/l2s}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
extra=()
[ -n "$INSTRUCTION" ] && extra+=(--instruction "$INSTRUCTION")
timed() { local name=$1; shift; local t0=$SECONDS; "$@" > "$OUT/$name.log" 2>&1; echo "$name: ok in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"; }

: > "$OUT/summary.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$OUT/summary.txt"
timed eval "$L2S" eval --offline --model "$MODEL" --task "$TASK" --split test --num-problems "$N" \
  --max-tokens "$MAX_TOKENS" "${extra[@]}" --out "$OUT/eval"
grep -A3 "^| model" "$OUT/eval/report.md" | head -4 >> "$OUT/summary.txt" || true
timed shortest "$L2S" distill shortest --model "$MODEL" --task "$TASK" --num-problems "$N" --k 4 \
  --max-tokens "$MAX_TOKENS" --max-steps 4 --batch-size 4 --gradient-checkpointing "${extra[@]}" \
  --engine-gpu-memory-utilization 0.5 --out "$OUT/shortest"
timed shortest-lora "$L2S" distill shortest --model "$MODEL" --task "$TASK" --num-problems "$N" --k 4 \
  --max-tokens "$MAX_TOKENS" --max-steps 4 --batch-size 4 --lora "${extra[@]}" \
  --engine-gpu-memory-utilization 0.5 --out "$OUT/shortest-lora"
timed rl "$L2S" distill rl --model "$MODEL" --task "$TASK" --iterations 1 --problems-per-iteration 8 --k 4 \
  --max-tokens "$MAX_TOKENS" --validation-problems 16 --micro-batch-size 4 --gradient-checkpointing \
  --learning-rate 1e-6 "${extra[@]}" --out "$OUT/rl"
tail -1 runs/rl/rl-*/metrics.jsonl >> "$OUT/summary.txt" || true
mkdir -p "$OUT/serve-models" && ln -sfn "$(realpath "$OUT/rl")" "$OUT/serve-models/rl"
cat > "$OUT/server.yaml" <<YAML
defaults:
  engine: {dtype: auto, max_model_len: $((MAX_TOKENS + 512)), gpu_memory_utilization: 0.4}
variants:
  - {name: base, path: $MODEL, engine: {dtype: auto, max_model_len: $((MAX_TOKENS + 512)), gpu_memory_utilization: 0.4}}
  - {name: shortest-lora, path: $(realpath "$OUT/shortest-lora")}
YAML
timed serve "$PY" -c "
from pathlib import Path
from openai import OpenAI
from l2s.local_server import start_server, stop_server, wait_healthy
process, url = start_server('$OUT/serve-models', '--config', '$OUT/server.yaml', log_path=Path('$OUT/serve.log'))
try:
    wait_healthy(url, process, timeout=900)
    client = OpenAI(base_url=url + '/v1', api_key='unused')
    for model in ('rl', 'base', 'shortest-lora'):
        reply = client.chat.completions.create(model=model, messages=[{'role': 'user', 'content': 'What is 12+34?'}],
                                               max_tokens=256, extra_body={'thinking_token_budget': 64})
        print(model, reply.usage)
finally:
    stop_server(process)
"
cat "$OUT/summary.txt"
