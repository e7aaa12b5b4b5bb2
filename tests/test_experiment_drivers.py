"""experiments/lib.sh, the run/record helpers every study driver sources, and the summaries that
read what record writes."""

from __future__ import annotations

import json
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
