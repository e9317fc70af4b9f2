#!/usr/bin/env bash
# The GPU checks of the DINOv3 training stages, in one run (about 8 minutes on one H100 / H200):
#  (a) the SSL training step of ViT-L/16 in bf16, plain (DDP's path on one GPU) and FSDP2-sharded: images/s and
#      peak memory (benchmarks/train_step_gpu.py; the released code's figure is about 112 images/s per H100);
#  (b) a few minutes of dinov3_vits16 pretraining on the synthetic benchmark at 224 px, then
#      benchmarks/patch_features.py on its teacher: do patch-level features form at that scale?
#    OUT=gpu_out bash benchmarks/gpu_stages.sh             # everything lands in $OUT (default gpu_out)
#    SMOKE=1 OUT=/tmp/g bash benchmarks/gpu_stages.sh      # the same commands at toy sizes on a CPU, in a minute
# Needs only the repository (PYTHONPATH=.) and a python3 with torch, numpy, pillow, pyyaml, safetensors, tqdm.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ -n "${SMOKE:-}" ]; then
  STEP=(--device cpu --backbone dinov3_test --batch 2 --steps 1 --warmup 1 --global-size 64 --local-size 32)
  SYNTH=(--size 64 --scale 0.05) TRAIN=(model.backbone=dinov3_test crops.global_size=64 crops.local_size=32
    train.batch_size=4 train.grad_accumulation=1 train.steps=4 "model.dino_head={n_prototypes: 64}"
    "model.ibot_head={n_prototypes: 64}" optim.warmup_steps=1 teacher.warmup_temp_steps=1 data.num_workers=0)
  MINUTES=1
else
  STEP=()
  SYNTH=(--size 224) TRAIN=(train.batch_size=128 train.grad_accumulation=1 train.steps=100000 data.num_workers=12
    optim.warmup_steps=1000 teacher.warmup_temp_steps=1000 checkpoint.every=500)
  MINUTES=${MINUTES:-4}
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt" || true
for parallel in ddp fsdp; do
  $PY benchmarks/train_step_gpu.py "${STEP[@]}" --parallel "$parallel" 2>&1 | tee "$OUT/train_step_$parallel.txt"
done
$PY -m dinokit.cli data synth "$OUT/data" --seed 0 "${SYNTH[@]}" > "$OUT/synth.txt" 2>&1
# pretraining for a fixed wall-clock budget: SIGTERM saves a checkpoint and exports nothing, so the teacher of the
# newest checkpoint is exported afterwards
timeout -s TERM "${MINUTES}m" $PY -m dinokit.cli train dinov3_vits16 data.path="$OUT/data/pretrain" \
  output_dir="$OUT/run" train.log_every=50 "${TRAIN[@]}" > "$OUT/train.txt" 2>&1 || true
ckpt=$(ls "$OUT"/run/checkpoints/step_*.pt | tail -n 1)
$PY -m dinokit.cli convert "$ckpt" "$OUT/run/teacher_backbone" --format dinokit
tail -n 3 "$OUT/run/metrics.jsonl" > "$OUT/last_metrics.jsonl"
$PY benchmarks/patch_features.py "$OUT" 2>&1 | tee "$OUT/patch_features.txt"
