"""Table of experiments/ssl/temporal_order_study.sh's results.jsonl as Markdown.

    python experiments/ssl/summarize_temporal.py OUT_DIR/results.jsonl

One row per label budget: test accuracy (%) of R(2+1)D small trained from random init and
fine-tuned from the temporal-order pretraining, mean ± std over seeds, the paired gain
(fine-tune minus scratch of the same seed) and every seed's pair; above it, the order accuracy of
the pretraining itself (held-out end of each video, chance 50%). A later record of the same
(row, clips, seed) replaces an earlier one (a re-run of the driver records finished runs again).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from deeprecipe.sweep_summary import mean_std


def load(path: Path) -> dict[tuple[str, int, int], dict]:
    records: dict[tuple[str, int, int], dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            records[(record["row"], int(record["clips"]), int(record["seed"]))] = record
    return records


def table(records: dict[tuple[str, int, int], dict]) -> str:
    pretrain = [r["test/acc"] for (row, _, _), r in sorted(records.items()) if row == "pretrain"]
    lines = [f"Order accuracy of the pretraining (chance 50%): {mean_std(pretrain, scale=100)}", ""]
    lines += [
        "| labelled clips | from scratch | fine-tuned from temporal order | gain (paired) "
        "| per seed: scratch / fine-tuned |",
        "|---|---|---|---|---|",
    ]
    for clips in sorted({clips for (row, clips, _) in records if row != "pretrain"}):
        seeds = sorted(seed for (row, c, seed) in records if row == "scratch" and c == clips)
        scratch = {s: records[("scratch", clips, s)]["test/acc"] for s in seeds}
        tuned = {
            s: r["test/acc"]
            for (row, c, s), r in records.items()
            if row == "finetune" and c == clips
        }
        paired = [s for s in seeds if s in tuned]
        gains = [tuned[s] - scratch[s] for s in paired]
        per_seed = ", ".join(f"s{s}: {scratch[s] * 100:.1f} / {tuned[s] * 100:.1f}" for s in paired)
        gain = mean_std(gains, scale=100, count=False)
        gain = "+" + gain if gains and statistics.mean(gains) > 0 else gain
        lines.append(
            f"| {clips} | {mean_std(list(scratch.values()), scale=100)} "
            f"| {mean_std(list(tuned.values()), scale=100)} | {gain} | {per_seed} |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    path = Path(sys.argv[1])
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: run temporal_order_study.sh first.")
    print(table(load(path)))


if __name__ == "__main__":
    main()
