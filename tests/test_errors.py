"""A plugin error inside nnU-Net's own commands: the plugin's message, no traceback, exit 2 (nnunet_fm.errors)."""

import atexit
import hashlib
import os
import sys
from pathlib import Path

import pytest

from nnunet_fm import errors
from nnunet_fm.errors import EXIT_BAD_INPUT, UserInputError, install_excepthook
from nnunet_fm.nnunet_commands import _resolve, run_in_own_group

DATASET_ID = 951  # the planned_workspace fixture's dataset (tests/conftest.py)


class _ExitCalledError(Exception):
    """Stands in for os._exit, which would end the test process."""


def _hook(monkeypatch, previous_calls: list) -> tuple[list, list]:
    """The plugin's excepthook over a recording previous hook; os._exit and the exit handlers recorded too."""
    exits, handlers = [], []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise _ExitCalledError

    monkeypatch.setattr(sys, "excepthook", lambda *info: previous_calls.append(info[0]))
    monkeypatch.setattr(os, "_exit", fake_exit)
    monkeypatch.setattr(atexit, "_run_exitfuncs", lambda: handlers.append("ran"))
    install_excepthook()
    install_excepthook()  # idempotent: one wrapper, not two
    return exits, handlers


def test_excepthook_reports_a_plugin_error_and_exits_2(monkeypatch, capsys):
    previous: list = []
    exits, handlers = _hook(monkeypatch, previous)
    error = UserInputError("Configuration 'x' has no preprocessed data. Run nnUNetv2_preprocess ...")
    with pytest.raises(_ExitCalledError):
        sys.excepthook(UserInputError, error, None)
    assert exits == [EXIT_BAD_INPUT] == [2]
    assert handlers == ["ran"]  # multiprocessing's and logging's exit handlers still run
    assert capsys.readouterr().err == f"nnunet-fm: error: {error}\n"
    assert previous == []


def test_excepthook_leaves_other_errors_and_interactive_sessions_alone(monkeypatch, capsys):
    previous: list = []
    exits, _ = _hook(monkeypatch, previous)
    sys.excepthook(RuntimeError, RuntimeError("a bug"), None)
    monkeypatch.setattr(sys, "ps1", ">>> ", raising=False)  # the interactive prompt keeps its tracebacks
    sys.excepthook(UserInputError, UserInputError("typo"), None)
    assert previous == [RuntimeError, UserInputError]
    assert exits == [] and capsys.readouterr().err == ""


def _digest(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.e2e
def test_stock_train_before_preprocess_exits_2_with_the_command(planned_workspace):
    """The real `nnUNetv2_train` right after `plans add`, without the nnUNetv2_preprocess line it printed."""
    name = "3d_errors_not_preprocessed"
    planned_workspace.run(
        "nnunet-fm", "plans", "add", "-d", str(DATASET_ID), "--template", "dinov3_ffa", "--name", name,
        "--set", "inplane_size=304", "encoder_weights=none",
    )  # fmt: skip
    results = planned_workspace.results
    before = _digest(results)
    command = [_resolve("nnUNetv2_train"), str(DATASET_ID), name, "0", "-tr", "nnUNetTrainerDINOv3FFA"]
    process = run_in_own_group([*command, "-device", "cpu"], planned_workspace.env())
    assert process.returncode == 2, process.stderr[-2000:]
    assert "Traceback" not in process.stderr
    expected = f"nnUNetv2_preprocess -d {planned_workspace.dataset_folder(DATASET_ID).name} -plans_name nnUNetPlans"
    assert f"nnunet-fm: error: Configuration '{name}'" in process.stderr
    assert f"{expected} -c {name}\n" in process.stderr
    assert _digest(results) == before  # nnU-Net's output folder and log were not created


def test_report_is_the_cli_format(capsys):
    assert errors.report(UserInputError("bad")) == 2
    assert capsys.readouterr().err == "nnunet-fm: error: bad\n"
