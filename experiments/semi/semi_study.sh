#!/usr/bin/env bash
# The semi-supervised study of experiments/semi/README.md (Fashion-MNIST, conf/experiment/
# semi_study.yaml): for each label count (labelled images per class) and seed, the rows
#   supervised     the labelled subset alone (repeated to fill batches)
#   pseudo_label   Lee 2013 on the labelled subset + the unlabelled rest
#   fixmatch       Sohn et al. 2020 (weak view pseudo-label above 0.95, strong view consistency)
#   mean_teacher   Tarvainen & Valpola 2017 (EMA teacher consistency)
#   self_training  rounds of teacher -> student (conf/semi/self_training.yaml; each round one
#                  supervised-sized run)
# and, once per seed (no label count), the ceilings
#   full           every training label, the same steps and batch (64) as the rows above
#   full_tuned     every training label under the default recipe (+experiment=fashion_resnet9:
#                  10 epochs of batch 256, one-cycle), the converged ceiling
# All rows run STEPS optimizer steps (each with one labelled batch of 64; the semi rows add
# mu = 7 unlabelled images per labelled one) with the same cosine schedule after a linear
# warm-up of WARMUP steps (default: a tenth of the run; WARMUP=1 starts at the peak rate, as
# FixMatch does), ResNet-9 of WIDTH.
# The labelled subset (and the validation split) is drawn by data.split_seed: SPLIT_SEED=N (default
# 0) gives every seed the same subset, so seeds vary the initialization and batch order only;
# SPLIT_SEED=seed draws each seed's own subset (the usual semi-supervised protocol: the spread
# then includes which images are labelled). Use a fresh OUT_DIR when changing it.
# A re-run skips finished runs and records them again (experiments/lib.sh): read results by
# their keys. Several drivers may share OUT_DIR at once when their runs differ.
# Usage (from the repository root):
#   [STEPS=2460] [WIDTH=16] [WARMUP=STEPS/10] [SPLIT_SEED=0|seed] \
#       experiments/semi/semi_study.sh OUT_DIR "SEEDS" "COUNTS" "ROWS"
# e.g. experiments/semi/semi_study.sh runs/semi "0 1 2" "4 25 100" \
#        "full full_tuned supervised pseudo_label fixmatch mean_teacher self_training"
# Results: one JSON line per run in OUT_DIR/results.jsonl; summary: summarize.py OUT_DIR.
set -euo pipefail
out=${1:?output dir}
seeds=${2:-"0 1 2"}
counts=${3:-"4 25 100"}
rows=${4:-"full full_tuned supervised pseudo_label fixmatch mean_teacher self_training"}
steps=${STEPS:-2460}
width=${WIDTH:-16}
python=${PYTHON:-.venv/bin/python}
# validate ten times per run; warm up for WARMUP steps in every row, whatever an epoch is
# (123 steps for the semi rows, 860 for every label, more for a self-training student)
tenth=$(( steps / 10 > 0 ? steps / 10 : 1 ))
warmup=${WARMUP:-$tenth}
common=(trainer.enable_progress_bar=false logger=csv model.width=$width)
study=(+experiment=semi_study trainer.max_steps=$steps trainer.val_check_interval=$tenth
       scheduler.warmup_steps=$warmup)
mkdir -p "$out"
source "$(dirname "$0")/../lib.sh"  # run, record

for seed in $seeds; do
    split=${SPLIT_SEED:-0}
    [ "$split" = seed ] && split=$seed
    for row in $rows; do
        case $row in
            full)
                dir=$out/full/$seed
                run "$dir" "${study[@]}" +semi=full seed=$seed data.split_seed=$split
                record "$dir" row=full labels_per_class=0 steps=$steps width=$width \
                    warmup=$warmup seed=$seed split_seed=$split
                ;;
            full_tuned)
                dir=$out/full_tuned/$seed
                run "$dir" +experiment=fashion_resnet9 seed=$seed data.split_seed=$split
                record "$dir" row=full_tuned labels_per_class=0 width=$width seed=$seed \
                    split_seed=$split
                ;;
            supervised | pseudo_label | fixmatch | mean_teacher | self_training)
                for count in $counts; do
                    dir=$out/$row/$count/$seed
                    run "$dir" "${study[@]}" +semi=$row data.labels_per_class=$count seed=$seed \
                        data.split_seed=$split
                    record "$dir" row=$row labels_per_class=$count steps=$steps width=$width \
                        seed=$seed split_seed=$split
                done
                ;;
            *)
                echo "unknown row '$row' (full full_tuned supervised pseudo_label fixmatch" \
                    "mean_teacher self_training)" >&2
                exit 2
                ;;
        esac
    done
done
