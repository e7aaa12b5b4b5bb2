"""Pivot tables of a sweep: mean ± std over seeds by two overrides, from job dirs on disk."""

from __future__ import annotations

import json
from pathlib import Path

from deeprecipe.sweep_summary import main, mean_std, pivot


def make_job(sweep: Path, number: int, overrides: list[str], metrics: dict | None) -> None:
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))


def test_pivot_gives_mean_and_std_per_cell(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    accuracy = {("sym40", "ce", 0): 0.70, ("sym40", "ce", 1): 0.74, ("sym40", "gce", 0): 0.80}
    accuracy |= {("sym40", "gce", 1): 0.82, ("sym0", "ce", 0): 0.90, ("sym0", "ce", 1): 0.90}
    for number, ((noise, loss, seed), value) in enumerate(accuracy.items()):
        overrides = ["+experiment=weak_study", f"+noise={noise}", f"+loss={loss}", f"seed={seed}"]
        make_job(sweep, number, overrides, {"test/acc": value, "seed": seed})
    make_job(sweep, 9, ["+noise=sym0", "+loss=gce", "seed=0"], None)  # unfinished: no cell
    table = pivot([sweep], "+noise", "+loss", "test/acc", scale=100, digits=1)
    assert table[0] == "test/acc x 100, mean ± std over 2 seeds"
    assert table[2] == "| +noise / +loss | ce | gce |"
    # ce at 40%: mean 72.0, sample std of (70, 74) = 2.83; gce: 81.0 ± 1.41; sym0/gce empty
    assert table[4] == "| sym40 | 72.0 ± 2.8 | 81.0 ± 1.4 |"
    assert table[5] == "| sym0 | 90.0 ± 0.0 |  |"
    main([str(sweep), "--rows", "+noise", "--columns", "+loss", "--scale", "100"])
    assert "| sym40 | 72.00 ± 2.83 | 81.00 ± 1.41 |" in capsys.readouterr().out


def test_mean_std_formats_the_sample_std_and_the_count():
    assert mean_std([]) == ""
    assert mean_std([0.9]) == "0.9 (n=1)"
    assert mean_std([0.8, 0.9, 1.0], scale=100) == "90.0 ± 10.0 (n=3)"  # sample std (n-1)
    assert mean_std([1.0, 2.0], digits=2, count=False) == "1.50 ± 0.71"
