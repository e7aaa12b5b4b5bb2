#!/usr/bin/env bash
# The self-supervised study of experiments/ssl/README.md (issue 5): every method pretrained for
# the same number of steps on Fashion-MNIST without labels, then evaluated four ways, next to a
# random initialization and to supervised training from scratch on the same labels:
#   kNN       val/knn_acc of the frozen backbone (k 200, training split as the bank)
#   linear    a linear classifier on the frozen backbone (METHOD_linear), test accuracy
#   ft1 ft10  fine-tuning on 1% (60 per class) and 10% (600 per class) of the labels
#             (METHOD_finetune: backbone at 1/10 of the head's learning rate), test accuracy
#   ft10u     fine-tuning on 10% with one learning rate for every layer (backbone_lr_scale 1),
#             the fairer match for scratch once labels are not few
#   scratch   the same network trained on the same 1% / 10% from random init (supervised)
# Pretraining runs STEPS steps of batch 256 (linear warm-up of WARMUP steps, default STEPS/10,
# then cosine decay) for every method, so the methods differ in objective, not compute or
# schedule (the CPU pilot ran WARMUP=0; a warm-up in epochs would differ between methods only
# through their configs, and without one ResNet-9 width 16 failed to train in the hashtag study). MAE pretrains and evaluates its ViT (model=mae_vit);
# every other method ResNet-9 (width WIDTH). "random" probes and fine-tunes an untrained ResNet-9.
# Usage (from the repository root):
#   experiments/ssl/ssl_study.sh OUT_DIR "SEEDS" STEPS ["METHODS"]
# Settings (environment): WIDTH (16), LINEAR_EPOCHS (10), FT1_EPOCHS (30), FT10_EPOCHS (15),
# WARMUP (STEPS/10);
# EXTRA: overrides added to every run (e.g. EXTRA="trainer.precision=bf16-mixed").
# Results: one JSON line per evaluation run in OUT_DIR/results.jsonl (a re-run skips the runs
# that finished and records them again: read results by their keys).
set -euo pipefail
out=${1:?output dir}
seeds=${2:-"0 1 2"}
steps=${3:-2000}
methods=${4:-"random rotation jigsaw context simclr moco byol barlow_twins mae"}
width=${WIDTH:-16}
linear_epochs=${LINEAR_EPOCHS:-10}
ft1_epochs=${FT1_EPOCHS:-30}
ft10_epochs=${FT10_EPOCHS:-15}
warmup=${WARMUP:-$((steps / 10))}
python=${PYTHON:-.venv/bin/python}
read -r -a extra <<< "${EXTRA:-}"
common=(trainer.enable_progress_bar=false logger=csv "${extra[@]}")
mkdir -p "$out"
source "$(dirname "$0")/../lib.sh"  # run, record

for seed in $seeds; do
    for split in 1:60:$ft1_epochs:64 10:600:$ft10_epochs:128; do
        IFS=: read -r percent per_class epochs batch <<< "$split"
        dir=$out/scratch$percent/$seed
        run "$dir" +experiment=hashtag_scratch model=resnet9 model.width=$width seed=$seed \
            data.labels_per_class=$per_class data.batch_size=$batch trainer.max_epochs=$epochs
        record "$dir" method=scratch protocol=ft$percent seed=$seed
        # scratch trains every layer at one rate: it is also the uniform-lr row's reference
        if [ "$percent" = 10 ]; then record "$dir" method=scratch protocol=ft10u seed=$seed; fi
    done
    for method in $methods; do
        model=(model.width=$width)
        eval_as=$method
        [ "$method" = mae ] && model=()
        if [ "$method" = random ]; then
            checkpoint=null
            eval_as=simclr  # its linear/finetune experiments: ResNet-9, same protocol
        else
            pre=$out/pretrain/$method/$seed
            run "$pre" +experiment=${method}_pretrain "${model[@]}" seed=$seed \
                trainer.max_epochs=-1 trainer.max_steps=$steps scheduler.warmup_steps=$warmup
            record "$pre" method=$method protocol=pretrain seed=$seed
            checkpoint=$pre/checkpoints/last.ckpt
        fi
        dir=$out/linear/$method/$seed
        run "$dir" +experiment=${eval_as}_linear pretraining_checkpoint="$checkpoint" \
            "${model[@]}" seed=$seed trainer.max_epochs=$linear_epochs callbacks=ssl \
            callbacks.knn.every_n_epochs=$linear_epochs
        record "$dir" method=$method protocol=linear seed=$seed
        for split in 1:60:$ft1_epochs:64:0.1 10:600:$ft10_epochs:128:0.1 \
            10u:600:$ft10_epochs:128:1.0; do
            IFS=: read -r percent per_class epochs batch scale <<< "$split"
            dir=$out/finetune$percent/$method/$seed
            run "$dir" +experiment=${eval_as}_finetune pretraining_checkpoint="$checkpoint" \
                "${model[@]}" seed=$seed data.labels_per_class=$per_class \
                data.batch_size=$batch trainer.max_epochs=$epochs method.backbone_lr_scale=$scale
            record "$dir" method=$method protocol=ft$percent seed=$seed
        done
    done
done
