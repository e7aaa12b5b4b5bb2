"""The lecture's recipe as commands: each step on scikit-learn's digits or a tiny Fashion-MNIST
sample, the gradient checks against planted bugs, and the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from conftest import CONF, QUIET, group_options
from deeprecipe.errors import ConfigError, DataNotFoundError, NonFiniteLossError
from deeprecipe.recipe import (
    coarse,
    curves,
    gradcheck,
    initial_loss,
    lr_find,
    overfit,
    refine,
    sweeps,
)
from deeprecipe.recipe.__main__ import main
from deeprecipe.recipe.common import Training, build_classifier, merge_overrides
from deeprecipe.recipe.model_report import is_video_model
from deeprecipe.train import user_error

DIGITS_MLP = ("data=digits", "model=mlp", "model.hidden_dims=[32]", *QUIET)


def test_initial_loss_passes_on_a_correct_model_and_fails_with_logits_scaled(make_cfg, tmp_path):
    cfg = make_cfg(*DIGITS_MLP)
    result = initial_loss.run(cfg, tmp_path)
    assert result.passed is True, result.verdict
    assert result.values["expected"] == pytest.approx(math.log(10))
    datamodule, method = build_classifier(cfg)
    datamodule.setup("fit")
    with torch.no_grad():  # logits x 100: the net starts confidently wrong
        method.head.reset_parameters()  # PyTorch's init (the suite's default head starts at 0)
        method.head.weight.mul_(100)
        method.head.bias.mul_(100)
    broken = initial_loss.check(method, datamodule)
    assert broken.passed is False and "too high" in broken.verdict
    assert broken.values["loss"] > 5 * math.log(10)


def test_overfit_reaches_100_percent_on_20_fashion_mnist_examples(make_cfg, fashion, tmp_path):
    cfg = make_cfg(*merge_overrides(QUIET, overfit.STEP_CHOICES))  # the default ResNet-9
    result = overfit.run(cfg, tmp_path, examples=20, epochs=100, datamodule=fashion)
    assert result.passed is True, result.verdict
    assert result.values["examples"] == result.values["batch_size"] == 20  # one full batch
    assert result.values["epochs"][-1]["train/acc"] == 1.0
    assert "weight_decay=0.0" in " ".join(result.details)
    assert (tmp_path / "plots" / "learning_curves.png").is_file()
    assert len(fashion.train) > 20  # the shared datamodule keeps its full training split


def rows(accuracies: list[float]) -> list[dict[str, float]]:
    return [
        {"epoch": float(i), "step": float(i + 1), "train/acc": a} for i, a in enumerate(accuracies)
    ]


@pytest.mark.parametrize(
    ("training", "passed", "phrase"),
    [
        (Training([2.3, 9.0, math.nan], rows([0.1]), NonFiniteLossError("NaN")), False, "explodes"),
        (
            Training([2.3, 4.0, 6.0, 8.0, 9.0], rows([0.1] * 5), None),
            False,
            "explodes: LR too high",
        ),
        (Training([2.3] * 5, rows([0.1] * 5), None), False, "not going down: LR too low"),
        (Training([2.3, 1.5, 1.0, 0.9, 0.8], rows([0.2, 0.4, 0.6]), None), False, "train longer"),
        (Training([2.3, 1.0, 0.1], rows([0.5, 1.0]), None), True, "after 2 epochs"),
    ],
)
def test_overfit_diagnoses_the_lectures_failure_modes(training, passed, phrase):
    assert overfit.diagnose(training, 20, 0.1)[0] is passed
    assert phrase in overfit.diagnose(training, 20, 0.1)[1]


def test_lr_find_runs_the_range_test_and_the_quick_check(make_cfg, tmp_path):
    cfg = make_cfg(*DIGITS_MLP, *lr_find.STEP_CHOICES)
    result = lr_find.run(cfg, tmp_path, iterations=15, range_steps=30)
    assert set(result.values["quick_check"]) == {"0.1", "0.01", "0.001", "0.0001"}
    assert result.values["recommended_lr"] is not None
    assert len(result.values["range_test"]["lr"]) == len(result.values["range_test"]["loss"])
    assert result.values["range_test"]["lr"][0] == pytest.approx(1e-6)
    assert (tmp_path / "quick_check.png").is_file() and (tmp_path / "lr_range_test.png").is_file()


def test_steepest_fall_is_found_per_decade():
    lrs = [10 ** (-6 + 6 * i / 49) for i in range(50)]
    losses = [2.3 - 2.0 / (1 + math.exp(-4 * (math.log10(lr) + 2))) for lr in lrs]  # falls at 1e-2
    assert lr_find.steepest(lrs, losses) == pytest.approx(1e-2, rel=0.4)


def test_coarse_and_refine_write_presets_from_the_previous_result(make_cfg, tmp_path):
    cfg = make_cfg("data=digits", *QUIET)
    grid = coarse.run(cfg, tmp_path / "coarse", ["data=digits", "optim.lr=5"], 0.1, 2, launch=False)
    assert grid.passed is None and "launch it with" in grid.verdict
    grid.save(tmp_path / "coarse")
    preset = yaml.safe_load((tmp_path / "coarse" / "preset.yaml").read_text())
    assert preset["hydra"]["sweeper"]["params"] == {
        "optim.lr": "0.032,0.1,0.32",
        "optim.weight_decay": "0,1e-5,1e-4",
        "trainer.max_epochs": 2,
    }
    command = (tmp_path / "coarse" / "command.sh").read_text()
    assert "-m +sweep=coarse data=digits optim.lr=0.032,0.1,0.32" in command  # not optim.lr=5
    with pytest.raises(ConfigError, match="launch it first"):
        refine.best_of_coarse(cfg, tmp_path / "coarse")
    search = refine.plan({"optim.lr": "0.1", "optim.weight_decay": "1e-4"}, 15, 10, [], tmp_path)
    assert search.params["optim.lr"] == "tag(log,interval(0.0333,0.3))"
    assert search.params["optim.weight_decay"] == "tag(log,interval(1e-05,0.001))"
    assert (
        refine.plan({"optim.lr": "0.1"}, 15, 10, [], tmp_path).params["optim.weight_decay"] == "0"
    )
    written = yaml.safe_load(search.preset_yaml())["hydra"]["sweeper"]
    assert written["n_trials"] == 10 and written["params"]["scheduler"] == "constant"


def test_ranked_jobs_follow_the_objective_mode(tmp_path, monkeypatch):
    """A minimized objective (bits per char) ranks its lowest job first."""
    jobs = [
        {"job": str(i), "status": "ok", "metrics": {"val/bpc": v}, "overrides": {}}
        for i, v in enumerate([2.1, 1.7, 1.9])
    ]
    monkeypatch.setattr(sweeps, "read_jobs", lambda sweep_dir: jobs)
    tmp_path.mkdir(exist_ok=True)
    assert [j["job"] for j in sweeps.ranked_jobs(tmp_path, "val/bpc")] == ["0", "2", "1"]
    assert [j["job"] for j in sweeps.ranked_jobs(tmp_path, "val/bpc", False)] == ["1", "2", "0"]


def test_sweep_presets_fit_the_existing_style():
    for name in ("coarse", "refine"):
        text = (CONF / "sweep" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_")
        assert set(yaml.safe_load(text)) <= {"defaults", "hydra"}  # sweeper settings only


def write_run(folder: Path, train_acc: list[float], val_acc: list[float], job: str = "") -> None:
    (folder / "plots").mkdir(parents=True)
    epochs = [
        {"epoch": float(i), "step": 10.0 * (i + 1), "train/acc": t, "val/acc": v}
        for i, (t, v) in enumerate(zip(train_acc, val_acc, strict=True))
    ]
    losses = [2.3 * 0.97**step for step in range(10 * len(epochs))]
    (folder / "plots" / "learning_curves.json").write_text(
        json.dumps({"loss": losses, "epochs": epochs})
    )
    (folder / "csv").mkdir()
    (folder / "csv" / "metrics.csv").write_text(
        "epoch,step,val/loss\n" + "".join(f"{i},{10 * (i + 1)},0.5\n" for i in range(len(epochs)))
    )
    if job:
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "overrides.yaml").write_text(f"- optim.lr={job}\n- data=digits\n")


def test_curves_diagnose_over_and_underfitting_across_a_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep / "0", [0.80, 0.95, 0.99], [0.80, 0.86, 0.87], job="0.3")
    write_run(sweep / "1", [0.70, 0.75, 0.78], [0.72, 0.77, 0.79], job="0.01")
    result = curves.run(sweep, tmp_path / "out")
    diagnoses = result.values["diagnoses"]
    assert diagnoses["job 0: optim.lr=0.3"][0] == "overfitting"
    assert diagnoses["job 1: optim.lr=0.01"][0] == "underfitting"
    assert "still rising: train longer" in diagnoses["job 1: optim.lr=0.01"][1]
    assert (tmp_path / "out" / "curves.png").is_file()
    run = curves.read_run(sweep / "0")
    assert run is not None and run.epochs[0]["val/loss"] == 0.5  # filled in from the CSV


def test_curves_see_a_validation_peak(tmp_path):
    write_run(tmp_path / "run", [0.8, 0.9, 0.92], [0.85, 0.89, 0.86])
    result = curves.run(tmp_path / "run", tmp_path / "out")
    assert (
        result.verdict.startswith("overfitting") and "peaked at 0.890 in epoch 2" in result.verdict
    )


class WrongSquare(torch.autograd.Function):
    """x ** 2 with a planted bug: backward forgets the factor 2."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * x  # should be 2 * x * grad


class BuggyLayer(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x):
        return WrongSquare.apply(self.linear(x))


def test_gradcheck_catches_a_planted_backward_bug():
    small = gradcheck.check_module("buggy", BuggyLayer(3), (torch.randn(2, 3),))
    assert small.status == "FAIL" and small.note.startswith("full check")
    large = gradcheck.check_module("buggy", BuggyLayer(64), (torch.randn(8, 64),))
    assert large.status == "FAIL" and large.note.startswith("directional check")
    fine = gradcheck.check_module(
        "fine", nn.Sequential(nn.Linear(3, 3), nn.Tanh()), (torch.randn(2, 3),)
    )
    assert fine.status == "pass"
    summary = gradcheck.summarize([fine, small])
    assert summary.passed is False and "FAIL the gradient check: buggy" in summary.verdict


def model_spec(option: str) -> list[str]:
    """Overrides that give a model config the data it was written for."""
    text = (CONF / "model" / f"{option}.yaml").read_text()
    if "vocab_size" in text:  # character models: text data
        return ["+experiment=char_lstm", "data=fortunes", f"model={option}"]
    if is_video_model(option):  # short clips; at 16 px R(2+1)D-18's last BN sees 2 values
        size = 32 if option in TORCHVISION_VIDEO else 16
        return [
            "data=moving_fashion",
            "data.num_frames=4",
            f"data.image_size={size}",
            f"model={option}",
        ]
    return [f"model={option}"]


# 31-33 M parameters checked in float64: 15-30 s each
TORCHVISION_VIDEO = {"r3d_18", "r2plus1d_18"}


@pytest.mark.parametrize(
    "option",
    [
        pytest.param(option, marks=pytest.mark.slow) if option in TORCHVISION_VIDEO else option
        for option in group_options("model")
    ],
)
def test_gradcheck_passes_on_every_custom_layer_of_every_model(make_cfg, option):
    cfg = make_cfg(*model_spec(option))
    try:
        checks = gradcheck.model_checks(cfg)
    except DataNotFoundError as missing:
        pytest.skip(str(missing))
    assert checks and all(check.status == "pass" for check in checks), checks


def test_gradcheck_passes_on_every_augmentation_and_loss():
    checks = gradcheck.augment_checks() + gradcheck.loss_checks()
    assert not [check for check in checks if check.status == "FAIL"]
    passed = {check.component for check in checks if check.status == "pass"}
    assert {"RandomPadCrop", "Mixup", "soft_cross_entropy", "nt_xent"} <= passed


def test_command_line_prints_the_verdict_and_writes_the_report(tmp_path, capsys):
    status = main(["initial_loss", *DIGITS_MLP, "--out", str(tmp_path), "--batches", "2"])
    assert status == 0
    assert capsys.readouterr().out.startswith("initial_loss: PASS mean cross-entropy at init")
    assert json.loads((tmp_path / "result.json").read_text())["passed"] is True
    assert "| batches |" in (tmp_path / "report.md").read_text()
    assert main(["initial_loss", "model=nonexistent", "--out", str(tmp_path)]) == 2
    assert "model" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="initial_loss"):
        main(["no_such_step"])


def test_all_chains_the_steps_into_one_report(tmp_path):
    options = ["--dry-run", "--iterations", "15", "--overfit-epochs", "60", "--out", str(tmp_path)]
    assert main(["all", *DIGITS_MLP, *options]) in (0, 1)
    report = (tmp_path / "report.md").read_text()
    for step in ("initial_loss", "overfit", "lr_find", "coarse"):
        assert f"## {step}" in report and (tmp_path / step / "result.json").is_file()
    assert "| refine, curves | INFO | skipped: the coarse sweep was not launched" in report
    assert "-m +sweep=coarse" in (tmp_path / "coarse" / "command.sh").read_text()


@pytest.mark.slow
def test_all_launches_both_sweeps_and_reads_their_curves(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the sweeps' run.py writes under the current directory
    options = ["--coarse-epochs", "1", "--refine-epochs", "2", "--trials", "2", "--out", "all"]
    main(["all", "+experiment=digits_mlp", *QUIET, "--iterations", "30", *options])
    report = (tmp_path / "all" / "report.md").read_text()
    assert "## refine" in report and "## curves" in report
    for step in ("coarse", "refine"):
        assert (tmp_path / "all" / step / "sweep" / "summary.md").is_file()
    best = json.loads((tmp_path / "all" / "refine" / "result.json").read_text())["values"]["best"]
    assert best["val/acc"] > 0.5


def test_default_model_passes_initial_loss_and_pytorch_head_init_fails_it(make_cfg, fashion):
    """The default ResNet-9 starts at log(10) only because its head starts at zero."""
    cfg = make_cfg(*QUIET)
    _, method = build_classifier(cfg)
    assert method.head.weight.abs().sum() == 0 and method.head.bias.abs().sum() == 0
    result = initial_loss.check(method, fashion)
    assert result.passed is True, result.verdict
    assert result.values["loss"] == pytest.approx(math.log(10), abs=1e-4)
    _, pytorch_init = build_classifier(make_cfg(*QUIET, "method.head_init=default"))
    assert initial_loss.check(pytorch_init, fashion).passed is False


def test_unknown_head_init_is_a_config_error(make_cfg):
    with pytest.raises(Exception, match="head_init") as raised:
        build_classifier(make_cfg(*DIGITS_MLP, "method.head_init=ones"))
    assert isinstance(user_error(raised.value), ConfigError)


def test_coarse_grid_heatmap_places_each_job_in_its_cell(tmp_path):
    import json

    import matplotlib.image

    sweep = tmp_path / "sweep"
    grid = {(0.1, 0.0): 0.5, (0.1, 1e-4): 0.6, (0.3, 0.0): 0.7, (0.3, 1e-4): 0.9}
    for job, ((lr, wd), acc) in enumerate(grid.items()):
        (sweep / str(job) / ".hydra").mkdir(parents=True)
        (sweep / str(job) / ".hydra" / "overrides.yaml").write_text(
            f"- optim.lr={lr}\n- optim.weight_decay={wd}\n"
        )
        (sweep / str(job) / "metrics.json").write_text(json.dumps({"val/acc": acc}))
    lrs, decays, values = coarse.grid_values(sweep, "val/acc")
    assert lrs == [0.1, 0.3] and decays == [0.0, 1e-4]
    assert values.tolist() == [[0.5, 0.7], [0.6, 0.9]]  # rows: weight decay; columns: lr
    path = coarse.grid_heatmap(sweep, "val/acc", tmp_path / "grid.png")
    assert path is not None and matplotlib.image.imread(path).shape[2] in (3, 4)
    (tmp_path / "empty").mkdir()
    assert coarse.grid_heatmap(tmp_path / "empty", "val/acc", tmp_path / "none.png") is None
