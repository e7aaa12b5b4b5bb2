#!/usr/bin/env bash
# The hashtag study of experiments/weak/README.md: weak pretraining on simulated hashtags, then
# fine-tuning on 1% of the clean labels (60 per class), against training on the 1% alone.
#   rows: label space designed (pool 10/30/100%) or raw (design step off, pool 100%)
#   (a re-run skips the runs that finished and records them again: read results by their keys)
#   x two capacities: ResNet-9 width 4 (small) and width 16 (large)
# Pretraining runs an equal number of steps (STEPS x batch 256) whatever the pool size, with the
# same schedule (cosine from lr 0.1 after a linear warm-up of WARMUP steps, default 43 = 10% of
# the default 430, counted in steps so that it is equal on every pool), so the pools differ in
# data, not in compute or schedule. Fine-tuning and scratch (270 steps: 30 epochs of 9 batches)
# warm up for FT_WARMUP steps (default 27). WARMUP=0 FT_WARMUP=9 gives the first recipe (no
# pretraining warm-up, one epoch for the others), under which width 16 failed to train.
# Usage (from the repository root):
#   [WARMUP=N] [FT_WARMUP=N] experiments/weak/hashtag_study.sh OUT_DIR "SEEDS" [STEPS] ["CAPACITIES"]
# Results: one JSON line per fine-tune/scratch run in OUT_DIR/results.jsonl (experiments/lib.sh).
set -euo pipefail
out=${1:?output dir}
seeds=${2:-"0 1 2"}
steps=${3:-430}
capacities=${4:-"4 16"}
warmup=${WARMUP:-43}
ft_warmup=${FT_WARMUP:-27}
python=${PYTHON:-.venv/bin/python}
common=(trainer.enable_progress_bar=false logger=csv)
mkdir -p "$out"
source "$(dirname "$0")/../lib.sh"  # run, record

for seed in $seeds; do
    for capacity in $capacities; do
        model=(model=resnet9 model.width=$capacity)
        dir=$out/scratch/w$capacity/$seed
        run "$dir" +experiment=hashtag_scratch "${model[@]}" seed=$seed \
            scheduler.warmup_steps=$ft_warmup
        record "$dir" row=scratch capacity=$capacity pool=0.0 seed=$seed
        for space_pool in designed:0.1 designed:0.3 designed:1.0 raw:1.0; do
            space=${space_pool%%:*}
            pool=${space_pool##*:}
            data=fashion_mnist_hashtags
            [ "$space" = raw ] && data=fashion_mnist_hashtags_raw
            pre=$out/pretrain/$space/w$capacity/pool$pool/$seed
            run "$pre" +experiment=hashtag_pretrain data=$data data.pool_fraction=$pool \
                "${model[@]}" seed=$seed trainer.max_epochs=-1 trainer.max_steps=$steps \
                scheduler=cosine scheduler.warmup_steps=$warmup
            fine=$out/finetune/$space/w$capacity/pool$pool/$seed
            run "$fine" +experiment=hashtag_finetune \
                pretraining_checkpoint="$pre/checkpoints/last.ckpt" "${model[@]}" seed=$seed \
                scheduler.warmup_steps=$ft_warmup
            record "$fine" row=pretrain_$space capacity=$capacity pool=$pool seed=$seed
        done
    done
done
