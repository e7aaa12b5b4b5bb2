#!/usr/bin/env bash
# The transfer study of experiments/transfer/README.md (issue 5): the lecture's 2x2 table,
# similar / very different dataset x little / lots of data, filled with measured accuracies.
# Source: ResNet-9 (width WIDTH) trained with labels on Fashion-MNIST classes 0-4
# (+experiment=transfer_source, one per seed). Targets (+experiment=transfer_target):
#   similar    Fashion-MNIST classes 5-9 (same imaging, classes the source never saw)
#   different  scikit-learn's 8x8 handwritten digits, upsampled to 28 px (data=digits)
#   little     10 labelled images per class;   lots: every training image (25,000 / 1,295)
# Protocols, equal steps within a cell: scratch (random init), linear (frozen, final features),
# linear_stage2 (frozen, layer2's pooled output), finetune_top (layer3 + head trained),
# finetune_all (every layer, backbone at 1/10 of the head's learning rate).
# Usage (from the repository root):
#   experiments/transfer/transfer_study.sh OUT_DIR "SEEDS" ["CELLS"] ["PROTOCOLS"]
# Settings (environment): WIDTH (16); EXTRA: overrides added to every run.
# Results: one JSON line per target run in OUT_DIR/results.jsonl (a re-run skips the runs that
# finished and records them again: read results by their keys).
set -euo pipefail
out=${1:?output dir}
seeds=${2:-"0 1 2"}
cells=${3:-"similar_little different_little different_lots similar_lots"}
protocols=${4:-"scratch linear linear_stage2 finetune_top finetune_all"}
width=${WIDTH:-16}
python=${PYTHON:-.venv/bin/python}
read -r -a extra <<< "${EXTRA:-}"
common=(trainer.enable_progress_bar=false logger=csv model=resnet9 model.width=$width "${extra[@]}")
mkdir -p "$out"
source "$(dirname "$0")/../lib.sh"  # run, record

for seed in $seeds; do
    source=$out/source/$seed
    run "$source" +experiment=transfer_source seed=$seed
    ckpt=$source/checkpoints/last.ckpt
    for cell in $cells; do
        case $cell in  # data, then the budget: batch, epochs, validation every N epochs
            similar_*) data=(data.classes=[5,6,7,8,9] data.num_classes=5) ;;
            different_*) data=(data=digits data.image_size=28 data.classes=null data.num_classes=10) ;;
            *) echo "unknown cell $cell" >&2; exit 2 ;;
        esac
        case $cell in
            *_little) budget=(data.labels_per_class=10 data.batch_size=25 trainer.max_epochs=100
                              trainer.check_val_every_n_epoch=10) ;;
            similar_lots) budget=(data.batch_size=64 trainer.max_epochs=3) ;;
            different_lots) budget=(data.batch_size=64 trainer.max_epochs=40
                                    trainer.check_val_every_n_epoch=4) ;;
        esac
        for protocol in $protocols; do
            case $protocol in
                scratch) how=(method=supervised pretrained=null) ;;
                linear) how=(method=linear_probe optim=sgd_momentum optim.weight_decay=0) ;;
                linear_stage*) how=(method=linear_probe method.stage=${protocol#linear_stage}
                                    optim=sgd_momentum optim.weight_decay=0) ;;
                finetune_top) how=(method=finetune method.freeze_stages=2) ;;
                finetune_all) how=(method=finetune) ;;
                *) echo "unknown protocol $protocol" >&2; exit 2 ;;
            esac
            dir=$out/$cell/$protocol/$seed
            run "$dir" +experiment=transfer_target pretraining_checkpoint="$ckpt" seed=$seed \
                "${data[@]}" "${budget[@]}" "${how[@]}"
            record "$dir" cell=$cell protocol=$protocol seed=$seed
        done
    done
done
