"""The ``l0-sparsity`` command line on user errors and run feedback (issue #12, section 2).

Every CLI run is the ``synthetic_smoke`` preset on one CPU thread, one epoch where possible.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import shlex
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from l0_helpers import smoke_cli

import l0_sparsity.training.trainer as trainer
from l0_sparsity.cli.app import (
    build_parser,
    config_from_args,
    main,
    resume_command,
    target_missed,
)
from l0_sparsity.data import DATASETS
from l0_sparsity.models import MODELS
from l0_sparsity.training.checkpoint import load_checkpoint
from l0_sparsity.training.metrics import MetricsLogger
from l0_sparsity.training.presets import PRESETS, TrainConfig, field_docs, get_preset

SMOKE = get_preset("synthetic_smoke").replace(threads=1, num_workers=0, device="cpu", epochs=1)
ONE_EPOCH = ("--epochs", "1", "--batch-size", "128")


def _digests(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def _one_error_line(code: int, err: str) -> str:
    """The single error line of a refused command (exit code 2, no traceback)."""
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith("l0-sparsity") and "error:" in lines[0], err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch run: checkpoint, metrics and plot (copy it before changing it)."""
    directory = tmp_path_factory.mktemp("finished")
    assert main(smoke_cli(directory, *ONE_EPOCH)) == 0
    return directory


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    """A copy of the finished run that a test may change."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


# ------------------------------------------------------------- 1. a run already there


def test_train_into_a_finished_run_is_refused_naming_resume_and_overwrite(finished_run, capsys):
    before = _digests(finished_run)
    line = _one_error_line(main(smoke_cli(finished_run, *ONE_EPOCH)), capsys.readouterr().err)
    assert "already holds a run" in line and "--resume" in line and "--overwrite" in line
    assert _digests(finished_run) == before


def test_a_directory_with_only_metrics_is_refused_too(tmp_path, capsys):
    (tmp_path / "metrics.csv").write_text("epoch,train_loss\n0,1.0\n")
    before = _digests(tmp_path)
    line = _one_error_line(main(smoke_cli(tmp_path, *ONE_EPOCH)), capsys.readouterr().err)
    assert "metrics.csv" in line
    assert _digests(tmp_path) == before


def test_overwrite_replaces_the_old_run(run_copy, capsys):
    events = run_copy / "tensorboard" / "events.out.tfevents.old"
    events.parent.mkdir()
    events.write_bytes(b"old events")
    (run_copy / "notes.txt").write_text("mine")
    code = main(smoke_cli(run_copy, *ONE_EPOCH, "--target", "0.5", "--overwrite"))
    assert code == 0, capsys.readouterr().err
    assert load_checkpoint(run_copy / "checkpoint.pt")["config"]["target"] == 0.5
    assert len((run_copy / "metrics.csv").read_text().splitlines()) == 2  # header, 1 epoch
    assert not events.exists() and (run_copy / "notes.txt").read_text() == "mine"


def test_resume_and_overwrite_together_are_refused(run_copy, capsys):
    before = _digests(run_copy)
    code = main(smoke_cli(run_copy, "--epochs", "2", "--resume", "--overwrite"))
    assert "exclude each other" in _one_error_line(code, capsys.readouterr().err)
    assert _digests(run_copy) == before


def test_python_api_refuses_a_run_on_request_and_keeps_its_default(run_copy):
    config = SMOKE.replace(output_dir=str(run_copy))
    before = _digests(run_copy)
    with pytest.raises(ValueError, match="already holds a run"):
        trainer.train(config, refuse_existing_run=True)
    assert _digests(run_copy) == before


def test_every_config_field_is_documented_overwrite_included():
    docs = field_docs()
    assert [f.name for f in dataclasses.fields(TrainConfig) if not docs.get(f.name)] == []
    assert TrainConfig().overwrite is False and "Replace the run" in docs["overwrite"]


# -------------------------------------------------- 2. paths that cannot be written


@pytest.mark.parametrize("under", [False, True], ids=["file", "under-a-file"])
def test_output_dir_that_is_a_file_is_one_line_exit_2(tmp_path, capsys, under):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    output_dir = blocker / "run" if under else blocker
    line = _one_error_line(main(smoke_cli(output_dir, *ONE_EPOCH)), capsys.readouterr().err)
    assert "output_dir" in line and "expected a directory" in line
    assert [p.name for p in tmp_path.iterdir()] == ["blocker"]
    assert blocker.read_text() == "a file"


def test_python_api_refuses_an_output_dir_under_a_file_before_training(tmp_path):
    (tmp_path / "blocker").write_text("a file")
    with pytest.raises(ValueError, match="lies under the file"):
        trainer.train(SMOKE.replace(output_dir=str(tmp_path / "blocker" / "run")))


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("missing_dir/x.pt2", "does not exist"),
        ("checkpoint.pt/x.pt2", "lies under the file"),
        (".", "is a directory"),
    ],
)
def test_purge_to_an_unwritable_path_is_one_line_exit_2(run_copy, capsys, out, message):
    before = _digests(run_copy)
    code = main(["purge", str(run_copy / "checkpoint.pt"), str(run_copy / out)])
    line = _one_error_line(code, capsys.readouterr().err)
    assert message in line and "out" in line
    assert _digests(run_copy) == before


# ------------------------------------------------------------------- 3. the mode flags


@pytest.mark.parametrize(
    "flags",
    [
        ["--target", "0.3", "--layer-targets", "0.5"],
        ["--target", "0.3", "--penalty", "0.1"],
        ["--layer-targets", "0.5", "--penalty", "0.1"],
    ],
    ids=lambda flags: " ".join(f for f in flags if f.startswith("--")),
)
def test_two_mode_flags_are_refused(tmp_path, capsys, flags):
    line = _one_error_line(main(smoke_cli(tmp_path / "run", *flags)), capsys.readouterr().err)
    assert "exclude each other" in line
    assert all(flag in line for flag in flags if flag.startswith("--"))
    assert not (tmp_path / "run").exists()


def _config(*argv: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_a_mode_flag_replaces_the_presets_mode():
    layerwise = ("--preset", "cifar10_wrn_layerwise")
    assert _config(*layerwise).mode == "layer-wise"
    model_wise = _config(*layerwise, "--target", "0.3")
    assert model_wise.mode == "model-wise" and model_wise.target == 0.3
    penalized = _config(*layerwise, "--penalty", "0.1")
    assert penalized.mode == "penalized" and penalized.layer_targets == ()
    layer_wise = _config("--preset", "cifar10_wrn", "--layer-targets", "0.4")
    assert layer_wise.mode == "layer-wise" and layer_wise.layer_targets == (0.4,)
    # the preset's own target is no conflict
    assert _config("--preset", "cifar10_wrn", "--penalty", "0.1").mode == "penalized"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--macs-target", "1.5"], "macs_target must be a fraction of the dense model's MACs"),
        (["--params-target", "0"], "params_target must be a fraction"),
        (["--macs-target", "abc"], "invalid float value"),
        (["--macs-penalty", "-1"], "macs_penalty must be >= 0, got -1.0"),
    ],
    ids=["above 1", "zero", "not a number", "negative penalty"],
)
def test_bad_budget_values_are_one_line_exit_2(tmp_path, capsys, flags, message):
    line = _one_error_line(main(smoke_cli(tmp_path / "run", *flags)), capsys.readouterr().err)
    assert message in line
    assert not (tmp_path / "run").exists()


def test_budget_flags_alone_replace_the_presets_mode_and_combine_with_a_mode_flag():
    alone = _config("--preset", "cifar10_wrn_layerwise", "--macs-target", "0.3")
    assert alone.mode == "budget-only" and alone.budgets == {"macs": 0.3}
    assert alone.target is None and alone.layer_targets == ()
    both = _config("--macs-target", "0.3", "--params-target", "0.4", "--target", "0.5")
    assert both.mode == "model-wise" and both.target == 0.5
    assert both.budgets == {"macs": 0.3, "params": 0.4}
    penalized = _config("--preset", "cifar10_wrn_layerwise", "--macs-penalty", "0.5")
    assert penalized.mode == "budget-only" and penalized.macs_penalty == 0.5
    layer_wise = _config("--layer-targets", "0.4", "--params-target", "0.4")
    assert layer_wise.mode == "layer-wise" and layer_wise.budgets == {"params": 0.4}


def test_python_api_refuses_a_run_with_nothing_to_train_to():
    with pytest.raises(ValueError, match="nothing to train to"):
        SMOKE.replace(target=None).validate()
    SMOKE.replace(target=None, params_target=0.5).validate()


def test_python_api_refuses_layer_targets_with_a_penalty():
    with pytest.raises(ValueError, match=r"layer_targets .* and penalty .* exclude each other"):
        SMOKE.replace(layer_targets=(0.5,), penalty=0.1).validate()


# ---------------------------------------------------------------- 4. help and presets


def _train_parser() -> argparse.ArgumentParser:
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices["train"]


def test_every_train_flag_has_a_one_line_help_and_the_choices_are_listed():
    actions = {a.dest: a for a in _train_parser()._actions}
    docs = field_docs()
    for field in dataclasses.fields(TrainConfig):
        action = actions[field.name]
        assert action.help and "\n" not in action.help, field.name
        assert "preset's; base" not in action.help
        if field.name != "preset":
            assert docs[field.name].startswith(action.help), field.name
    expected = {
        "amp": ["off", "bf16", "fp16", "auto"],
        "optimizer": ["sgd", "adam"],
        "device": ["auto", "cpu", "cuda"],
        "on_nonfinite": ["raise", "skip"],
        "model": list(MODELS),
        "dataset": list(DATASETS),
    }
    for name, choices in expected.items():
        assert list(actions[name].choices) == choices, name


def test_train_help_shows_the_choices(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "{off,bf16,fp16,auto}" in out and "{sgd,adam}" in out and "{raise,skip}" in out
    assert "Weights' learning rate." in out and "(default: preset's" not in out


def test_presets_show_layer_targets_and_penalties_as_they_are(capsys, monkeypatch):
    penalized = get_preset("synthetic_smoke").replace(preset="penalized", penalty=0.1)
    monkeypatch.setitem(PRESETS, "penalized", penalized)
    assert main(["presets"]) == 0
    lines = {line.split(":")[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "layer_targets=0.2" in lines["cifar10_wrn_layerwise"]
    assert "target=0.5" not in lines["cifar10_wrn_layerwise"]
    assert "target=0.5" in lines["cifar10_wrn"]
    assert "penalty=0.1" in lines["penalized"] and " target=" not in lines["penalized"]


# --------------------------------------------------------------------- 5. run feedback


def test_presets_show_their_budgets(capsys, monkeypatch):
    budget = get_preset("synthetic_smoke").replace(preset="budget", target=None, macs_target=0.4)
    monkeypatch.setitem(PRESETS, "budget", budget)
    assert main(["presets"]) == 0
    lines = {line.split(":")[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["budget"].endswith(" macs_target=0.4") and " target=" not in lines["budget"]


def test_no_progress_keeps_the_epoch_lines(tmp_path, capsys):
    assert main(smoke_cli(tmp_path, *ONE_EPOCH, "--no-progress")) == 0
    out = capsys.readouterr().out
    assert "epoch    1/1  loss" in out and "done:" in out


def test_training_png_is_written_after_every_epoch(tmp_path, monkeypatch):
    plotted: list[int] = []
    original = MetricsLogger.plot

    def recording(self, path=None):
        written = original(self, path)
        plotted.append(len(self.rows))
        assert written is not None and written.is_file()
        return written

    monkeypatch.setattr(MetricsLogger, "plot", recording)
    trainer.train(SMOKE.replace(epochs=2, batch_size=512, output_dir=str(tmp_path)))
    assert plotted == [1, 2]


def test_ctrl_c_names_the_saved_epoch_and_the_resume_command(tmp_path, capsys, monkeypatch):
    argv = smoke_cli(tmp_path / "my run", "--epochs", "3", "--batch-size", "512")
    calls = []
    original = trainer.train_step

    def interrupted_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # 2 steps an epoch: the first step of epoch 2
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", interrupted_in_epoch_2)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert "epoch 1/3 is saved" in err
    command = err.split("continue with: ", 1)[1].strip()
    assert command == shlex.join(["l0-sparsity", *argv, "--resume"])

    monkeypatch.setattr(trainer, "train_step", original)
    assert main(shlex.split(command)[1:]) == 0
    assert load_checkpoint(tmp_path / "my run" / "checkpoint.pt")["epoch"] == 2


def test_ctrl_c_before_any_epoch_was_saved_says_so(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train_step", interrupted)
    assert main(smoke_cli(tmp_path, *ONE_EPOCH)) == 130
    err = capsys.readouterr().err
    assert "before any epoch was saved" in err and "nothing to resume" in err


def test_resume_command_drops_overwrite_and_any_resume_flag():
    argv = ["train", "--overwrite", "--output-dir", "a b", "--no-res", "--epochs", "4"]
    assert resume_command(argv) == "l0-sparsity train --output-dir 'a b' --epochs 4 --resume"


def test_done_line_says_when_the_target_was_missed(tmp_path, capsys):
    assert main(smoke_cli(tmp_path, *ONE_EPOCH, "--target", "0.05")) == 0
    done = capsys.readouterr().out.splitlines()[-1]
    assert done.startswith("done:") and "target 0.0500 missed" in done
    assert "after 1 epoch " in done


def _result(mode: str, targets: list[float], **final: float) -> SimpleNamespace:
    problem = SimpleNamespace(mode=mode, targets=torch.tensor(targets).squeeze())
    return SimpleNamespace(final={"epoch": 19, **final}, problem=problem)


def test_target_missed_by_how_much_only_beyond_the_tolerance():
    assert target_missed(_result("model-wise", [0.35], expected_density=0.3525)) == ""
    missed = target_missed(_result("model-wise", [0.3], expected_density=0.63))
    assert "target 0.3000 missed" in missed and "0.3300 above it after 20 epochs" in missed
    layers = {"density/fc1": 0.5, "density/fc2": 0.21, "density/fc3": 0.9}
    missed = target_missed(_result("layer-wise", [0.2, 0.2, 0.2], **layers))
    assert "missed in 2 of 3 layers" in missed and "fc3: density 0.9000" in missed
    assert target_missed(_result("penalized", [], expected_density=0.9)) == ""


def test_resume_with_nothing_left_to_train_is_one_line_exit_2(run_copy, capsys):
    before = _digests(run_copy)
    code = main(smoke_cli(run_copy, "--epochs", "1", "--batch-size", "128", "--resume"))
    line = _one_error_line(code, capsys.readouterr().err)
    assert "nothing to do" in line and "already holds 1 epoch " in line and "--epochs" in line
    assert _digests(run_copy) == before
