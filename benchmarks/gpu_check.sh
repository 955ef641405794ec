#!/usr/bin/env bash
# One prepared GPU session (issues 16 and 13): every figure the docs want from a GPU, each step under `timeout`, all output
# in $OUT (default /tmp/gpu_check). Run from the repository root on a machine with one CUDA GPU:
#
#     OUT=/tmp/gpu_check bash benchmarks/gpu_check.sh
#
# 1. forward+backward tokens/s and MFU of bf16 glm-large and glm-2b shaped random models, against GPT-2 of the same
#    dimensions (benchmarks/train_speed.py, the trainer's own step);
# 2. cached greedy decoding tokens/s against transformers' GPT-2 generate, large and 2b shapes, bf16
#    (benchmarks/generate_speed.py --device cuda);
# 3. zero-shot evaluation (issue 13): WikiText tokens/s and LAMBADA examples/s against the unbatched loop and GPT-2
#    (benchmarks/eval_speed.py --device cuda, bf16);
# 4. host peak memory of loading a 1.1B random GLM from each source format (benchmarks/load_memory.py), then the
#    sharded folder loaded straight onto the GPU (from_pretrained(device="cuda", dtype=bfloat16)): GPU peak;
# 5. `torchglm fill` on the GPU in bf16, and with int4 weights through torchao (smoke).
# A step that fails or runs out of time is logged and the next one runs. The worst case is about 10 minutes.
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
step() {  # step NAME SECONDS COMMAND...: output to $OUT/NAME.txt, status to $OUT/summary.txt
    local name=$1 seconds=$2
    shift 2
    local start=$SECONDS
    timeout "$seconds" "$@" >"$OUT/$name.txt" 2>&1
    local status=$?
    echo "$name: exit $status in $((SECONDS - start)) s (limit $seconds s)" | tee -a "$OUT/summary.txt"
}

{ nvidia-smi; python -c "import torch, transformers; print(torch.__version__, torch.version.cuda, transformers.__version__)"; } \
    >"$OUT/machine.txt" 2>&1
step train_speed 150 python benchmarks/train_speed.py --sizes large 2b --precisions bf16 --seq 512 --batch 8 \
    --repeats 3 --no-previous
step decode_large 75 python benchmarks/generate_speed.py --device cuda --dtype bfloat16 --layers 24 --width 1024 \
    --heads 16 --context 512 --new 32 128 --batches 1 16 --repeats 3
step decode_2b 90 python benchmarks/generate_speed.py --device cuda --dtype bfloat16 --layers 36 --width 2048 \
    --heads 32 --context 512 --new 32 128 --batches 1 16 --repeats 3
step eval_speed 120 python benchmarks/eval_speed.py --device cuda --dtype bfloat16 --batch-size 16 --repeats 3
step load_memory 150 python benchmarks/load_memory.py --root "$OUT/checkpoints" --keep
step load_cuda 45 python - "$OUT/checkpoints/sharded" <<'EOF'
import sys, time, torch
from torchglm import GLMForConditionalGeneration
start = time.perf_counter()
model = GLMForConditionalGeneration.from_pretrained(sys.argv[1], dtype=torch.bfloat16, device="cuda")
seconds = time.perf_counter() - start
weights = sum(p.numel() * p.element_size() for p in model.parameters())
peak = torch.cuda.max_memory_allocated()
host = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(f"{torch.cuda.get_device_name()}: sharded fp16 -> bf16 on cuda, weights {weights / 1e9:.2f} GB, GPU peak "
      f"{peak / 1e9:.2f} GB ({peak / weights:.2f}x), host high-water mark {host / 1e9:.2f} GB, {seconds:.1f} s")
EOF
step fill_cuda 30 python -m torchglm.cli fill --device cuda --dtype bfloat16 --max-new-tokens 8 \
    "Tsinghua University is located in [MASK]." "The [MASK] sat on the mat."
step fill_cuda_int4 60 python -m torchglm.cli fill --device cuda --dtype bfloat16 --quantize int4 --max-new-tokens 8 \
    "Tsinghua University is located in [MASK]." "The [MASK] sat on the mat."
rm -rf "$OUT/checkpoints"  # 7 GB of random weights: not worth fetching
cat "$OUT/summary.txt"
