"""Reference point of the SSL study: multinomial logistic regression on raw Fashion-MNIST pixels.

    python experiments/ssl/logistic_reference.py [--l2 1e-4] [--iterations 200]

Trains on the suite's training split (55,000 images; `data=fashion_mnist`, split seed 0) with
pixels scaled to [0, 1] and standardized by the training mean and std per pixel, full-batch
L-BFGS on the mean cross-entropy plus `l2 * ||W||^2`; prints validation and test accuracy as
JSON. fp64, deterministic.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from deeprecipe.data import FashionMNISTDataModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--l2", type=float, default=1e-4)
    parser.add_argument("--iterations", type=int, default=200)
    args = parser.parse_args()
    start = time.perf_counter()
    data = FashionMNISTDataModule()
    data.setup("fit")
    splits = {"train": data.train, "val": data.val, "test": data.test}
    features = {k: v.images.flatten(1).double() / 255 for k, v in splits.items() if v is not None}
    labels = {k: v.labels for k, v in splits.items() if v is not None}
    mean, std = features["train"].mean(0), features["train"].std(0).clamp_min(1e-3)
    features = {k: (x - mean) / std for k, x in features.items()}
    weight = torch.zeros(784, 10, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(10, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], max_iter=args.iterations, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = features["train"] @ weight + bias
        loss = F.cross_entropy(logits, labels["train"]) + args.l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        accuracy = {
            f"{split}/acc": float(
                ((features[split] @ weight + bias).argmax(1) == y).double().mean()
            )
            for split, y in labels.items()
        }
    accuracy.update(l2=args.l2, iterations=args.iterations)
    accuracy["wall_time_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(accuracy))


if __name__ == "__main__":
    main()
