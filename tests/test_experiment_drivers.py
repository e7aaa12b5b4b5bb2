"""experiments/lib.sh, the run/record helpers every study driver sources, and the summaries that
read what record writes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bash(script: str, tmp_path: Path, python: str = sys.executable) -> subprocess.CompletedProcess:
    prelude = f'out={tmp_path}/out; python={python}; common=(logger=csv "a b=c"); mkdir -p "$out"\n'
    prelude += f"source {ROOT}/experiments/lib.sh\n"
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", prelude + script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )


def finished_run(path: Path, **metrics: float) -> Path:
    path.mkdir(parents=True)
    payload = {"val/acc": 0.5, "test/acc": 0.75, "train/loss": 1.0, "wall_time_s": 12.5}
    payload.update(params=1000, **metrics)
    (path / "metrics.json").write_text(json.dumps(payload))
    return path


def test_record_writes_the_keys_typed_and_the_eval_metrics(tmp_path):
    run_dir = finished_run(tmp_path / "runs" / "a")
    result = bash(
        f"record {run_dir} row=pretrain_raw capacity=16 pool=1.0 seed=2 x=ft10u", tmp_path
    )
    assert result.returncode == 0, result.stderr
    line = json.loads((tmp_path / "out" / "results.jsonl").read_text())
    assert line == {
        "row": "pretrain_raw",
        "capacity": 16,
        "pool": 1.0,
        "seed": 2,
        "x": "ft10u",
        "val/acc": 0.5,
        "test/acc": 0.75,
        "wall_time_s": 12.5,
        "params": 1000,
    }


def test_record_of_an_unfinished_run_fails_the_driver(tmp_path):
    (tmp_path / "empty").mkdir()
    result = bash(f"record {tmp_path}/empty seed=0; echo reached", tmp_path)
    assert result.returncode != 0 and "reached" not in result.stdout
    assert "metrics.json" in result.stderr


def test_run_skips_a_finished_run_and_passes_the_common_overrides_to_the_rest(tmp_path):
    fake = tmp_path / "fake_python"
    fake.write_text('#!/bin/bash\nprintf "%s\\n" "$@" >> "$(dirname "$0")/calls.txt"\n')
    fake.chmod(0o755)
    done = finished_run(tmp_path / "done")
    result = bash(
        f"run {done} +experiment=x seed=0; run {tmp_path}/new +experiment=y seed=1",
        tmp_path,
        str(fake),
    )
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert calls == [
        "run.py",
        "+experiment=y",
        "seed=1",
        "logger=csv",
        "a b=c",
        f"hydra.run.dir={tmp_path}/new",
    ]


def test_hashtag_summary_reads_what_record_writes(tmp_path):
    for row, pool, acc in (("scratch", "0.0", 0.70), ("pretrain_designed", "1.0", 0.80)):
        for seed in (0, 1):
            run_dir = finished_run(
                tmp_path / "runs" / f"{row}{seed}", **{"test/acc": acc + seed / 100}
            )
            result = bash(
                f"record {run_dir} row={row} capacity=4 pool={pool} seed={seed}", tmp_path
            )
            assert result.returncode == 0, result.stderr
    summary = subprocess.run(
        [
            sys.executable,
            str(ROOT / "experiments/weak/summarize_hashtag.py"),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "| trained on the 1% alone (600 labels) | 70.5 ± 0.7 (n=2) |" in summary
    assert "| hashtags, designed label space, 100% of the pool | 80.5 ± 0.7 (n=2) |" in summary


def fake_python(tmp_path: Path) -> Path:
    """A python that records its training arguments and writes the run dir's metrics.json
    (and runs the real interpreter for record's script on stdin)."""
    fake = tmp_path / "fake_python"
    fake.write_text(
        "#!/bin/bash\n"
        f'[ "$1" = - ] && exec {sys.executable} "$@"\n'
        'printf "%s\\n" "$*" >> "$(dirname "$0")/calls.txt"\n'
        'for a in "$@"; do case $a in hydra.run.dir=*) d=${a#hydra.run.dir=};; esac; done\n'
        'mkdir -p "$d"; echo \'{"test/acc": 0.5, "val/acc": 0.5}\' > "$d/metrics.json"\n'
    )
    fake.chmod(0o755)
    return fake


def test_semi_driver_runs_every_row_with_the_study_budget_and_records_it(tmp_path):
    fake = fake_python(tmp_path)
    driver = ROOT / "experiments/semi/semi_study.sh"
    result = subprocess.run(
        [str(driver), str(tmp_path / "out"), "3", "4 25", "full supervised fixmatch"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake), "STEPS": "100", "WIDTH": "8"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert len(calls) == 5  # full once, then supervised and fixmatch at two counts
    assert all(
        "trainer.max_steps=100 trainer.val_check_interval=10 scheduler.warmup_steps=10" in c
        for c in calls
    )
    assert all("model.width=8" in c and "seed=3" in c for c in calls)
    assert "+semi=fixmatch data.labels_per_class=25" in calls[-1]
    assert f"hydra.run.dir={tmp_path}/out/fixmatch/25/3" in calls[-1]
    records = [json.loads(x) for x in (tmp_path / "out/results.jsonl").read_text().splitlines()]
    assert [(r["row"], r["labels_per_class"]) for r in records] == [
        ("full", 0),
        ("supervised", 4),
        ("supervised", 25),
        ("fixmatch", 4),
        ("fixmatch", 25),
    ]
    # one labelled subset for every seed unless asked otherwise (SPLIT_SEED=seed)
    assert all("data.split_seed=0" in c for c in calls)
    assert {r["split_seed"] for r in records} == {0}


def test_semi_driver_can_draw_each_seeds_own_labelled_subset(tmp_path):
    fake = fake_python(tmp_path)
    result = subprocess.run(
        [
            str(ROOT / "experiments/semi/semi_study.sh"),
            str(tmp_path / "out"),
            "1 2",
            "4",
            "fixmatch",
        ],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake), "STEPS": "100", "SPLIT_SEED": "seed"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert ["seed=1 data.split_seed=1" in calls[0], "seed=2 data.split_seed=2" in calls[1]] == [
        True,
        True,
    ]


def test_semi_driver_rejects_an_unknown_row(tmp_path):
    result = subprocess.run(
        [str(ROOT / "experiments/semi/semi_study.sh"), str(tmp_path / "out"), "0", "4", "fixmach"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake_python(tmp_path))},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "unknown row 'fixmach'" in result.stderr


def test_semi_summary_reads_what_record_writes(tmp_path):
    out = tmp_path / "out"
    accs = {("supervised", 25): 0.60, ("fixmatch", 25): 0.80, ("fixmatch", 100): 0.86}
    accs[("full_tuned", 0)] = 0.92
    for (row, count), acc in accs.items():
        for seed in (0, 1):
            run_dir = finished_run(
                out / row / str(count) / str(seed), **{"test/acc": acc + seed / 100}
            )
            result = bash(
                f"record {run_dir} row={row} labels_per_class={count} seed={seed}", tmp_path
            )
            assert result.returncode == 0, result.stderr
    log = out / "fixmatch/25/0/csv/metrics.csv"
    log.parent.mkdir(parents=True)
    log.write_text(
        "epoch,train/mask_rate,train/pseudo_acc,val/acc\n0,0.5,0.9,\n0,,,0.7\n1,0.75,0.95,\n"
    )
    summary = subprocess.run(
        [sys.executable, str(ROOT / "experiments/semi/summarize.py"), str(out)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "| FixMatch | 80.5 ± 0.7 (n=2) | 86.5 ± 0.7 (n=2) |" in summary
    assert "| supervised-only (labelled subset) | 60.5 ± 0.7 (n=2) |  |" in summary
    assert "| FixMatch | 20.0 ± 0.0 (n=2) |  |" in summary  # paired gain at 25/class
    assert "at 25/class: 20.0 ± 0.0 (n=2) points (goal >= +15): **met**" in summary
    assert "(goal within 5 (>= -5)): **NOT met**" in summary  # 86.5 vs 92.5 at 100/class
    assert "| FixMatch | 25 | 75.0 (n=1) | 95.0 (n=1) |" in summary
    # the pseudo-label figures survive the run folders (the committed copy keeps the JSON only),
    # also when a later summary reads other runs afresh
    assert (out / "pseudo_results.jsonl").exists()
    shutil.rmtree(out / "fixmatch/25/0/csv")
    log = out / "fixmatch/100/1/csv/metrics.csv"
    log.parent.mkdir(parents=True)
    log.write_text("epoch,train/mask_rate,train/pseudo_acc\n0,0.25,0.5\n")
    summary = subprocess.run(
        [sys.executable, str(ROOT / "experiments/semi/summarize.py"), str(out)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "| FixMatch | 25 | 75.0 (n=1) | 95.0 (n=1) |" in summary
    assert "| FixMatch | 100 | 25.0 (n=1) | 50.0 (n=1) |" in summary
