#!/bin/bash
# The GPU checks, ON a lent device (docs/measurement.md, "On a GPU"); prepare with scripts/gpu_prepare.sh
# here first, then carry .gpu. Everything it prints also goes to $OUT. About 5-8 minutes on one H200:
#   1. tests/test_gpu.py: the runner on CUDA (pad_to_multiple_of=8, CUDA peaks, bf16, TF32, compile);
#   2. scripts/bench_runner.py: runner vs plain loop vs HF Trainer, one MRPC epoch, bf16, 2 interleaved repeats;
#   3. the same with torch.compile in every tool, 1 repeat.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 GLUE_DIR=$PWD/.gpu/glue RUNNER_MINILM=$PWD/.gpu/minilm
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
python3 -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)" | tee -a "$OUT/device.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/test_gpu.log"
python3 scripts/bench_runner.py --repeats 2 --precision bf16 --model "$RUNNER_MINILM" --json "$OUT/bench_bf16.json" 2>&1 | grep -v -i warn | tee "$OUT/bench_bf16.md"
python3 scripts/bench_runner.py --repeats 1 --precision bf16 --compile --model "$RUNNER_MINILM" --json "$OUT/bench_bf16_compile.json" 2>&1 | grep -v -i warn | tee "$OUT/bench_bf16_compile.md"
