"""Which unlabelled images would a trained model pseudo-label, and how wrongly?

    python experiments/semi/pseudo_confusion.py RUN_DIR [RUN_DIR ...] [--threshold 0.95]

For each run of experiments/semi/semi_study.sh (any row trained on a labelled subset), its best
checkpoint predicts the unlabelled training images of that run's split (clean, unaugmented, eval
mode: what the model itself reports, unlike the training-time figures of train/mask_rate and
train/pseudo_acc, measured on weak views with the batch's BatchNorm statistics). Printed per run:
the accuracy on every unlabelled image, the share above the threshold (the mask rate), the
accuracy of those confident pseudo-labels per predicted class, and the most frequent confident
errors as true -> predicted class.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from deeprecipe.evaluate.ensemble import best_checkpoint, load_member, run_config

CLASSES = ("T-shirt", "trouser", "pullover", "dress", "coat")
CLASSES += ("sandal", "shirt", "sneaker", "bag", "boot")


@torch.inference_mode()
def report(run_dir: Path, threshold: float) -> str:
    checkpoint = best_checkpoint(run_dir)
    cfg = run_config(checkpoint)
    method = load_member(checkpoint, cfg)
    if cfg.data.get("labels_per_class") is None:
        raise SystemExit(f"{run_dir} trained on every label: it has no unlabelled images.")
    # the semi split of the same labelled subset (data.split_seed and labels_per_class decide it)
    node = OmegaConf.to_container(cfg.data, resolve=True)
    assert isinstance(node, dict)
    for key in ("pseudo_labels", "min_epoch_size"):  # the supervised row's data module
        node.pop(key, None)
    data = instantiate({**node, "_target_": "deeprecipe.data.SemiFashionMNISTDataModule"})
    data.setup("fit")
    images, labels = data.unlabeled.images, data.unlabeled.labels
    probabilities = torch.cat(
        [
            method(method.prepare_images(images[i : i + 1000].float().div(255), augment=False))
            .float()
            .softmax(dim=-1)
            for i in range(0, len(images), 1000)
        ]
    )  # (N, K)
    confidence, predicted = probabilities.max(dim=1)  # (N,)
    mask = confidence >= threshold
    confusion = torch.zeros(10, 10, dtype=torch.long)  # [true, predicted] over confident images
    confusion.index_put_((labels[mask], predicted[mask]), torch.ones(()).long(), accumulate=True)
    correct = (predicted == labels).float()
    lines = [
        f"{run_dir}: {len(labels)} unlabelled images, accuracy {100 * correct.mean():.1f}%, "
        f"{100 * mask.float().mean():.1f}% at confidence >= {threshold}, "
        f"their accuracy {100 * correct[mask].mean():.1f}%",
        "  confident pseudo-labels correct, per predicted class: "
        + ", ".join(
            f"{name} {100 * confusion[c, c] / max(int(confusion[:, c].sum()), 1):.0f}%"
            for c, name in enumerate(CLASSES)
        ),
    ]
    errors = sorted(
        ((int(confusion[t, p]), t, p) for t in range(10) for p in range(10) if t != p),
        reverse=True,
    )[:6]
    lines.append(
        "  most frequent confident errors (true -> pseudo-label): "
        + ", ".join(f"{CLASSES[t]} -> {CLASSES[p]} {n}" for n, t, p in errors)
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--threshold", type=float, default=0.95)
    args = parser.parse_args()
    for run_dir in args.runs:
        print(report(run_dir, args.threshold))


if __name__ == "__main__":
    main()
