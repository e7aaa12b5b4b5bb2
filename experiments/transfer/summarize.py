"""Tables of experiments/transfer/transfer_study.sh's results.jsonl as Markdown.

    python experiments/transfer/summarize.py OUT_DIR/results.jsonl

First the lecture's 2x2 table (rows: little / lots of data; columns: similar / very different
dataset), each cell naming its best protocol and the gain over training from scratch; then every
protocol of every cell. Test accuracy in %, mean +- std over seeds (n stated). A later record of
the same (cell, protocol, seed) replaces an earlier one (a re-run of the driver records the
finished runs again).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from deeprecipe.sweep_summary import mean_std

CELLS = ("similar_little", "different_little", "similar_lots", "different_lots")
PROTOCOLS = ("scratch", "linear", "linear_stage2", "finetune_top", "finetune_all")
NAMES = {
    "scratch": "from scratch (random init, all layers)",
    "linear": "linear probe, final features (frozen)",
    "linear_stage2": "linear probe, stage 2 features (frozen)",
    "finetune_top": "fine-tune layer3 + head (stem..layer2 frozen)",
    "finetune_all": "fine-tune all layers (backbone lr x0.1)",
}
HEADERS = {
    "similar_little": "similar, little data",
    "different_little": "very different, little data",
    "similar_lots": "similar, lots of data",
    "different_lots": "very different, lots of data",
}


def load(path: Path) -> dict[tuple[str, str], list[float]]:
    records: dict[tuple[str, str, int], float] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            records[record["cell"], record["protocol"], record["seed"]] = record["test/acc"]
    grouped: dict[tuple[str, str], list[float]] = {}
    for (cell, protocol, _), value in sorted(records.items()):
        grouped.setdefault((cell, protocol), []).append(value * 100)
    return grouped


def fmt(values: list[float]) -> str:
    return mean_std(values)


def best(grouped: dict[tuple[str, str], list[float]], cell: str) -> str:
    scores = {p: statistics.mean(v) for (c, p), v in grouped.items() if c == cell and v}
    transfer = {p: s for p, s in scores.items() if p != "scratch"}
    if not transfer:
        return ""
    top = max(transfer, key=transfer.__getitem__)
    text = f"{NAMES[top].split(' (')[0]}: {transfer[top]:.1f}"
    if "scratch" in scores:
        text += f" ({transfer[top] - scores['scratch']:+.1f} vs scratch)"
    return text


def tables(path: Path) -> str:
    grouped = load(path)
    lines = [
        "| | very similar dataset | very different dataset |",
        "|---|---|---|",
        f"| very little data | {best(grouped, 'similar_little')} | "
        f"{best(grouped, 'different_little')} |",
        f"| quite a lot of data | {best(grouped, 'similar_lots')} | "
        f"{best(grouped, 'different_lots')} |",
        "",
        "| protocol | " + " | ".join(HEADERS[c] for c in CELLS) + " |",
        "|---" * (len(CELLS) + 1) + "|",
    ]
    for protocol in PROTOCOLS:
        cells = [fmt(grouped.get((c, protocol), [])) for c in CELLS]
        lines.append(f"| {NAMES[protocol]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(tables(Path(sys.argv[1])))
