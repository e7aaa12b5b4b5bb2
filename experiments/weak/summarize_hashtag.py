"""Tables of experiments/weak/hashtag_study.sh's results as Markdown.

    python experiments/weak/summarize_hashtag.py OUT_DIR

OUT_DIR is the driver's output folder (or a copy holding its two JSON files). Printed:

1. test accuracy (%) of the model fine-tuned on 1% of the clean labels, per row (scratch, pool
   size, label space) and capacity (ResNet-9 width), mean +- std over seeds (OUT_DIR/results.jsonl,
   a later record of the same key replacing an earlier one);
2. the pretraining's own health: accuracy of its tag head on the clean validation labels (its
   best checkpoint; designed label space only, where the head's 10 targets are the classes).

The pretraining metrics are read from OUT_DIR/pretrain/SPACE/wWIDTH/poolPOOL/SEED/metrics.json
and saved to OUT_DIR/pretrain_results.jsonl, which is read instead when the run folders are gone
(the copy under experiments/weak/ keeps only the JSON files).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from deeprecipe.sweep_summary import mean_std

ROWS = (
    ("scratch", 0.0, "trained on the 1% alone (600 labels)"),
    ("pretrain_designed", 0.1, "hashtags, designed label space, 10% of the pool"),
    ("pretrain_designed", 0.3, "hashtags, designed label space, 30% of the pool"),
    ("pretrain_designed", 1.0, "hashtags, designed label space, 100% of the pool"),
    ("pretrain_raw", 1.0, "hashtags, raw tags (design step off), 100% of the pool"),
)
WIDTH_NAMES = {"4": "ResNet-9 width 4 (small)", "16": "ResNet-9 width 16 (large)"}


def cell(values: list[float]) -> str:
    return mean_std(values, scale=100)


def load_finetune(out: Path) -> dict[tuple[str, float, str, int], float]:
    results: dict[tuple[str, float, str, int], float] = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            results[(r["row"], float(r["pool"]), str(r["capacity"]), int(r["seed"]))] = r[
                "test/acc"
            ]
    return results


def load_pretrain(out: Path) -> list[dict]:
    saved = out / "pretrain_results.jsonl"
    found = sorted((out / "pretrain").glob("*/w*/pool*/*/metrics.json"))
    if not found:
        if not saved.is_file():
            return []
        return [json.loads(line) for line in saved.read_text().splitlines() if line.strip()]
    records = []
    for path in found:
        space, width, pool, seed = path.parts[-5:-1]
        metrics = json.loads(path.read_text())
        records.append(
            {
                "space": space,
                "capacity": width.removeprefix("w"),
                "pool": float(pool.removeprefix("pool")),
                "seed": int(seed),
                **{k: v for k, v in metrics.items() if k.startswith(("val/", "test/"))},
                "wall_time_s": metrics.get("wall_time_s"),
            }
        )
    saved.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def finetune_table(results: dict[tuple[str, float, str, int], float]) -> str:
    widths = sorted({key[2] for key in results}, key=int)
    header = "| weak pretraining, then fine-tune on 1% | "
    header += " | ".join(WIDTH_NAMES.get(w, f"width {w}") for w in widths) + " |"
    lines = [header, "|---|" + "---|" * len(widths)]
    for row, pool, name in ROWS:
        cells = []
        for width in widths:
            values = [
                v for (r, p, w, _), v in sorted(results.items()) if (r, p, w) == (row, pool, width)
            ]
            cells.append(cell(values))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pretrain_table(records: list[dict]) -> str:
    designed = [r for r in records if r["space"] == "designed"]
    widths = sorted({r["capacity"] for r in designed}, key=int)
    lines = [
        "| pretraining (designed labels): tag head's accuracy on clean validation labels | "
        + " | ".join(WIDTH_NAMES.get(w, f"width {w}") for w in widths)
        + " |",
        "|---|" + "---|" * len(widths),
    ]
    for pool in sorted({r["pool"] for r in designed}):
        cells = []
        for width in widths:
            runs = sorted(
                (r for r in designed if r["capacity"] == width and r["pool"] == pool),
                key=lambda r: r["seed"],
            )
            text = cell([r["val/acc"] for r in runs])
            if runs:
                text += " [" + ", ".join(f"{r['val/acc'] * 100:.0f}" for r in runs) + "]"
            cells.append(text)
        lines.append(f"| {pool:.0%} of the pool | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    out = Path(sys.argv[1])
    if not (out / "results.jsonl").is_file():
        raise SystemExit(f"{out}/results.jsonl does not exist: run hashtag_study.sh first.")
    print(finetune_table(load_finetune(out)))
    pretrain = load_pretrain(out)
    if pretrain:
        print()
        print(pretrain_table(pretrain))


if __name__ == "__main__":
    main()
