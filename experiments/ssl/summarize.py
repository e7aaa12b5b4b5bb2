"""Table of experiments/ssl/ssl_study.sh's results.jsonl as Markdown (mean ± std over seeds).

    python experiments/ssl/summarize.py OUT_DIR/results.jsonl

Columns: kNN (val/knn_acc of the frozen backbone, 5,000 validation images), linear probe, and
fine-tuning on 1% / 10% of the labels (backbone at 1/10 of the head's rate) and on 10% at one
rate for every layer (test accuracy, 10,000 images), in %. A later record of
the same (method, protocol, seed) replaces an earlier one (a re-run of the driver records the
finished runs again).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from deeprecipe.sweep_summary import mean_std

COLUMNS = (("knn", "linear", "val/knn_acc"), ("linear", "linear", "test/acc"))
COLUMNS += (("1% labels", "ft1", "test/acc"), ("10% labels", "ft10", "test/acc"))
COLUMNS += (("10%, uniform lr", "ft10u", "test/acc"),)
ORDER = ("scratch", "random", "rotation", "jigsaw", "context", "simclr", "moco", "byol")
ORDER += ("barlow_twins", "mae")
NAMES = {
    "scratch": "supervised from scratch (same labels)",
    "random": "random init (frozen for kNN/linear)",
    "rotation": "rotation (pretext)",
    "jigsaw": "jigsaw (pretext)",
    "context": "context prediction (pretext)",
    "barlow_twins": "Barlow Twins",
    "moco": "MoCo v2",
    "byol": "BYOL",
    "simclr": "SimCLR",
    "mae": "MAE (ViT)",
}


def cell(values: list[float]) -> str:
    return mean_std(values, scale=100, count=False)


def table(path: Path) -> str:
    records: dict[tuple[str, str, int], dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            records[record["method"], record["protocol"], record["seed"]] = record
    methods = sorted(
        {m for m, _, _ in records},
        key=lambda m: (m not in ORDER, ORDER.index(m) if m in ORDER else 0, m),
    )
    seeds = sorted({s for _, _, s in records})
    lines = [
        f"| method (seeds: {', '.join(map(str, seeds))}) | "
        + " | ".join(c for c, _, _ in COLUMNS)
        + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for method in methods:
        cells = []
        for _, protocol, key in COLUMNS:
            values = [
                r[key]
                for (m, p, _), r in records.items()
                if m == method and p == protocol and key in r
            ]
            cells.append(cell(values))
        lines.append(f"| {NAMES.get(method, method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(table(Path(sys.argv[1])))
