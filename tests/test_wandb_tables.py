"""The sweep summary as a W&B table (offline: no login, no network)."""

from __future__ import annotations

import json
import math

import pytest

from deeprecipe.wandb_tables import TABLE_KEY, best_row, log_summary_table

HEADER = ["job", "optim.lr", "status", "val/acc"]
ROWS = [[0, "0.1", "ok", 0.91], [1, "0.3", "ok", 0.93], [2, "1.0", "failed: nan", math.nan]]


def test_best_row_skips_failed_jobs_and_follows_the_direction():
    assert best_row(HEADER, ROWS, "val/acc")["job"] == 1
    assert best_row(HEADER, ROWS, "val/acc", maximize=False)["job"] == 0
    assert best_row(HEADER, ROWS, "val/loss") == {}
    assert best_row(HEADER, [ROWS[2]], "val/acc") == {}


def test_offline_table_holds_every_job(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "2026-11-24_10-00-00"
    sweep.mkdir()
    run_dir = log_summary_table(sweep, HEADER, ROWS, project="test", objective="val/acc")
    assert run_dir is not None and run_dir.parent == sweep / "wandb"
    assert run_dir.name.startswith("offline-run-")
    key_dir = run_dir / "files" / "media" / "table" / TABLE_KEY.split("/")[0]
    (table_file,) = key_dir.glob(TABLE_KEY.split("/")[1] + "_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == HEADER
    # numbers stay numbers (sortable), NaN becomes an empty cell
    assert table["data"] == [
        [0, "0.1", "ok", 0.91],
        [1, "0.3", "ok", 0.93],
        [2, "1.0", "failed: nan", None],
    ]


def test_disabled_mode_logs_nothing(tmp_path):
    assert log_summary_table(tmp_path, HEADER, ROWS, project="test", mode="disabled") is None
    assert not (tmp_path / "wandb").exists()


def test_wandb_failure_is_a_warning_not_an_error(tmp_path, caplog):
    # an invalid mode makes wandb.init raise; the sweep's summary files must not be lost to it
    assert log_summary_table(tmp_path, HEADER, ROWS, project="test", mode="bogus") is None
    assert "summary.md" in caplog.text


@pytest.mark.parametrize("value", [True, None, "x"])
def test_non_numbers_become_strings(tmp_path, value, monkeypatch):
    from deeprecipe.wandb_tables import _cell

    assert isinstance(_cell(value), str)
