"""Tables of experiments/semi/semi_study.sh's results as Markdown.

    python experiments/semi/summarize.py OUT_DIR

OUT_DIR is the driver's output folder (or a copy holding its two JSON files). Printed:

1. test accuracy (%) per row and label count (labelled images per class), mean +- std over seeds
   (OUT_DIR/results.jsonl; a later record of the same key replaces an earlier one), the two
   ceilings (every label) below;
2. each semi method's gain over supervised-only on the same labels, paired by seed, and the
   issue's two goals;
3. the pseudo-labels at the end of training: mask rate (share of unlabelled images above the
   confidence threshold) and their accuracy against the hidden true labels (last epoch's means,
   from each run's CSV log), and for self-training its last round's teacher labels.

The pseudo-label figures are read from the run folders and saved to OUT_DIR/pseudo_results.jsonl,
which is read instead when the run folders are gone (the copy under experiments/semi/ keeps only
the JSON files).
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path

from deeprecipe.sweep_summary import mean_std

SEMI_ROWS = ("pseudo_label", "fixmatch", "mean_teacher", "self_training")
NAMES = {
    "supervised": "supervised-only (labelled subset)",
    "pseudo_label": "pseudo-label (Lee 2013)",
    "fixmatch": "FixMatch",
    "mean_teacher": "Mean Teacher (teacher's weights)",
    "self_training": "self-training (last student)",
    "full": "full supervision, same steps and batch",
    "full_tuned": "full supervision, default recipe (10 epochs, batch 256)",
}
# issue 6's goals: (row, count, reference row, reference count, least gain in points); the
# ceiling goal against both ceilings (the converged one is the stricter)
GOALS = (
    ("fixmatch", 25, "supervised", 25, 15.0),
    ("fixmatch", 100, "full_tuned", 0, -5.0),
    ("fixmatch", 100, "full", 0, -5.0),
)


def load_results(out: Path) -> dict[tuple[str, int, int], dict]:
    records: dict[tuple[str, int, int], dict] = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            records[record["row"], record["labels_per_class"], record["seed"]] = record
    return records


def last_logged(csv_path: Path, keys: tuple[str, ...]) -> dict[str, float]:
    """The last value of each key in a Lightning CSV log."""
    found: dict[str, float] = {}
    with csv_path.open() as f:
        for row in csv.DictReader(f):
            for key in keys:
                if row.get(key):
                    found[key] = float(row[key])
    return found


def pseudo_from_run(run_dir: Path, row: str) -> dict | None:
    """Mask rate and pseudo-label accuracy of one finished run folder, None when absent."""
    if row == "self_training":
        metrics_file = run_dir / "metrics.json"
        if not metrics_file.exists():
            return None
        rounds = json.loads(metrics_file.read_text()).get("rounds", [])
        labelled = [r for r in rounds if r.get("pseudo/mask_rate") is not None]
        if not labelled:
            return None
        return {
            "mask_rate": labelled[-1]["pseudo/mask_rate"],
            "pseudo_acc": labelled[-1]["pseudo/acc"],
        }
    logs = sorted(run_dir.glob("csv/**/metrics.csv"))
    if not logs:
        return None
    found = last_logged(logs[-1], ("train/mask_rate", "train/pseudo_acc"))
    if "train/mask_rate" not in found:
        return None
    return {"mask_rate": found["train/mask_rate"], "pseudo_acc": found.get("train/pseudo_acc")}


def load_pseudo(out: Path, records: dict[tuple[str, int, int], dict]) -> list[dict]:
    """Pseudo-label figures per semi run: from its run folder when present, else from the cache.

    The cache (OUT_DIR/pseudo_results.jsonl) is rewritten with the merged figures, so runs whose
    folders are gone keep their cached line next to the runs read afresh.
    """
    cache = out / "pseudo_results.jsonl"
    cached: dict[tuple[str, int, int], dict] = {}
    if cache.exists():
        for text in cache.read_text().splitlines():
            if text.strip():
                line = json.loads(text)
                cached[line["row"], line["labels_per_class"], line["seed"]] = line
    lines = []
    for row, count, seed in sorted(records):
        if row not in SEMI_ROWS:
            continue
        figures = pseudo_from_run(out / row / str(count) / str(seed), row)
        if figures is not None:
            lines.append({"row": row, "labels_per_class": count, "seed": seed, **figures})
        elif (row, count, seed) in cached:
            lines.append(cached[row, count, seed])
    if lines:
        cache.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return lines


def cell(values: list[float]) -> str:
    return mean_std(values, scale=100)


def accuracy_table(records: dict[tuple[str, int, int], dict]) -> list[str]:
    counts = sorted({c for (r, c, _) in records if c > 0})
    rows = [r for r in ("supervised", *SEMI_ROWS) if any(k[0] == r for k in records)]
    lines = [
        "| method | " + " | ".join(f"{c} labels/class ({10 * c})" for c in counts) + " |",
        "|---" * (len(counts) + 1) + "|",
    ]
    for row in rows:
        cells = [
            cell([rec["test/acc"] for (r, c, _), rec in records.items() if r == row and c == n])
            for n in counts
        ]
        lines.append(f"| {NAMES[row]} | " + " | ".join(cells) + " |")
    for row in ("full", "full_tuned"):
        values = [rec["test/acc"] for (r, _, _), rec in records.items() if r == row]
        if values:
            lines.append(f"| {NAMES[row]} | " + " | ".join([cell(values)] * len(counts)) + " |")
    return lines


def paired_gain(
    records: dict[tuple[str, int, int], dict], row: str, count: int, ref: str, ref_count: int
) -> list[float]:
    """Test-accuracy differences row - ref in points, over the seeds both have."""
    return [
        100 * (rec["test/acc"] - records[ref, ref_count, seed]["test/acc"])
        for (r, c, seed), rec in sorted(records.items())
        if r == row and c == count and (ref, ref_count, seed) in records
    ]


def gain_table(records: dict[tuple[str, int, int], dict]) -> list[str]:
    counts = sorted({c for (r, c, _) in records if c > 0})
    rows = [r for r in SEMI_ROWS if any(k[0] == r for k in records)]
    lines = [
        "| gain over supervised-only (points, paired by seed) | "
        + " | ".join(f"{c}/class" for c in counts)
        + " |",
        "|---" * (len(counts) + 1) + "|",
    ]
    for row in rows:
        cells = [mean_std(paired_gain(records, row, n, "supervised", n), digits=1) for n in counts]
        lines.append(f"| {NAMES[row]} | " + " | ".join(cells) + " |")
    lines.append("")
    for row, count, ref, ref_count, least in GOALS:
        gains = paired_gain(records, row, count, ref, ref_count)
        if not gains:
            continue
        mean = statistics.fmean(gains)
        target = f">= +{least:g}" if least > 0 else f"within {-least:g} (>= {least:g})"
        verdict = "met" if mean >= least else "NOT met"
        lines.append(
            f"- {NAMES[row]} at {count}/class minus {NAMES[ref]}"
            + (f" at {ref_count}/class" if ref_count else "")
            + f": {mean_std(gains, digits=1)} points (goal {target}): **{verdict}**"
        )
    return lines


def pseudo_table(pseudo: list[dict]) -> list[str]:
    keys = sorted({(p["row"], p["labels_per_class"]) for p in pseudo})
    if not keys:
        return []
    lines = [
        "| method | labels/class | mask rate (%) | pseudo-label accuracy (%) |",
        "|---|---|---|---|",
    ]
    for row, count in keys:
        chosen = [p for p in pseudo if p["row"] == row and p["labels_per_class"] == count]
        rates = [p["mask_rate"] for p in chosen]
        accs = [p["pseudo_acc"] for p in chosen if p.get("pseudo_acc") is not None]
        lines.append(f"| {NAMES[row]} | {count} | {cell(rates)} | {cell(accs)} |")
    return lines


def main(out: Path) -> str:
    records = load_results(out)
    parts = [accuracy_table(records), gain_table(records), pseudo_table(load_pseudo(out, records))]
    return "\n\n".join("\n".join(p) for p in parts if p)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(main(Path(sys.argv[1])))
