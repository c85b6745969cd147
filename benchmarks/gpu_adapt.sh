#!/usr/bin/env bash
# Issue 15 on a GPU: adapt ViT-S/16 on the ssTEM sections 00-07 for a fixed number of steps in bf16 (CUDA autocast),
# record images/s and peak GPU memory, then run the same evaluation as benchmarks/bench_adapt.py.
#
#   bash benchmarks/gpu_adapt.sh [OUT] [STEPS]        # default OUT=$OUT or /tmp/gpu_adapt, STEPS=300
#
# Starts from pretrained ViT-S/16 weights when this machine has them (NEUROS_CV_WEIGHTS or the HF cache), else
# from random init (training from scratch). Needs the ssTEM data beside the project (../shared/data) and a CUDA
# torch; prints one JSON line per stage and writes everything under OUT. Never downloads anything.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-/tmp/gpu_adapt}}"
STEPS="${2:-300}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p "$OUT_DIR"
RAW="${NEUROS_CV_SSTEM:-../shared/data/sstem_drosophila_vnc/raw}"
[ -f "$RAW/00.tif" ] || RAW=shared/data/sstem_drosophila_vnc/raw
[ -f "$RAW/00.tif" ] || { echo "gpu_adapt: no ssTEM raw sections (../shared/data/sstem_drosophila_vnc/raw)"; exit 2; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

"$PY" - "$OUT_DIR" "$STEPS" "$RAW" <<'EOF'
import json, sys, time
from pathlib import Path

import torch

from neuros.plugins.cv.adapt import AdaptConfig, adapt
from neuros.plugins.cv.backbones.resolve import weights_available

out, steps, raw = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
assert torch.cuda.is_available(), "gpu_adapt: torch sees no CUDA device"
weights = "pretrained" if weights_available("vit-small") else "random(seed=0)"
files = [str(raw / f"{i:02d}.tif") for i in range(8)]  # 08-13 held back for the evaluation
cfg = AdaptConfig(steps=steps, batch_size=32, global_size=224, local_size=96, n_local=6, lr=5e-4 if weights ==
                  "pretrained" else 1e-3, momentum=0.994, gram_weight=1.0 if weights == "pretrained" else 0.0)
torch.cuda.reset_peak_memory_stats()
t0 = time.perf_counter()
folder = adapt(files, out / "adapted", "vit-small", weights, cfg, device="cuda", checkpoint_every=100,
               overwrite=True)
wall = time.perf_counter() - t0
prov = json.loads((folder / "adapt.json").read_text())
print(json.dumps({"stage": "adapt", "weights": weights, "steps": prov["steps"], "wall_s": round(wall, 1),
                  "images_per_s_median": prov["images_per_s_median"], "final_loss": prov["final_loss"],
                  "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                  "dtype": "bfloat16 autocast", "gpu": torch.cuda.get_device_name(0)}), flush=True)
EOF

# The evaluation of bench_adapt.py on the adapted ViT-S (rows: the start weights, adapted, filter bank).
"$PY" - "$OUT_DIR" <<'EOF'
import json, sys, time
from functools import partial
from pathlib import Path

from neuros.plugins.cv.backbones import register_backbone
from neuros.plugins.cv.backbones.dinov3 import DINOv3Backbone
from neuros.plugins.cv.experiments.pixel_suite import PixelSuiteConfig, run_pixel_suite

out = Path(sys.argv[1])
adapted = out / "adapted"
base = json.loads((adapted / "adapt.json").read_text())["base_weights"]
for name, w in (("gpu-adapt-base", base), ("gpu-adapt-adapted", f"pretrained:{adapted}")):
    register_backbone(name, partial(DINOv3Backbone, "vit-small", weights=w, tile=256, overlap=32, device="cuda"),
                      summary=name, family="dinov3")
rows = {}
for label, pix, patch in (("start", "gpu-adapt-base[stride=2]", "gpu-adapt-base"),
                          ("adapted", "gpu-adapt-adapted[stride=2]", "gpu-adapt-adapted"),
                          ("filter bank", "filterbank[stride=1]", "filterbank")):
    t0 = time.perf_counter()
    res, _ = run_pixel_suite(PixelSuiteConfig(datasets=("em",), pixel_backbone=pix, patch_backbone=patch,
                                              baseline=False, control_backbone=None))
    rows[label] = res["pixel"]
    for r in res["pixel"]:
        print(json.dumps({"stage": "eval", "row": label, "method": r["method"],
                          "dice": {c: round(v["dice"], 4) for c, v in r["classes"].items()},
                          "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
(out / "gpu_results.json").write_text(json.dumps(rows, indent=1, default=str))
EOF
