"""``nnunet-fm experiment``: grid, summary tables, and a resumable run through stock commands."""

import csv

import pytest

from nnunet_fm.experiment import Run, grid, settings_for, summarise, to_markdown

DATASET_ID = 951  # the planned_workspace fixture's dataset (tests/conftest.py)


def _record(trainer, shots, seed, dice1, dice2, vessel=None):
    """A run record; ``vessel`` = (clDice 1, clDice 2, binary clDice, binary Betti-0 error), absent in old records."""
    record = {
        "trainer": trainer,
        "shots": shots,
        "seed": seed,
        "fold": "0",
        "mean_dice": (dice1 + dice2) / 2,
        "per_class_dice": {"1": dice1, "2": dice2},
    }
    if vessel:
        record["per_class_cldice"] = {"1": vessel[0], "2": vessel[1]}
        record["binary_cldice"], record["binary_betti0_error"] = vessel[2], vessel[3]
    return record


def test_grid_and_summary_statistics():
    runs = grid(["A", "B"], [1, 3], [0, 1], ["0"])
    assert len(runs) == 8 and runs[0] == Run("A", 1, 0, "0") and runs[0].name == "A__k1__s0__fold0"
    rows = summarise(
        [
            _record("A", 1, 0, 0.2, 0.4, (0.1, 0.3, 0.2, 3)),
            _record("A", 1, 1, 0.4, 0.6, (0.3, 0.5, 0.4, 1)),
            _record("A", 3, 0, 0.8, 0.8),  # a record from before the vessel metrics
        ]
    )
    first = rows[0]
    assert (first["trainer"], first["shots"], first["runs"]) == ("A", 1, 2)
    assert first["dice_mean"] == pytest.approx(0.4) and first["dice_std"] == pytest.approx(0.1)
    assert first["class_1_mean"] == pytest.approx(0.3) and first["class_2_std"] == pytest.approx(0.1)
    assert first["cldice_mean"] == pytest.approx(0.3) and first["cldice_class_2_mean"] == pytest.approx(0.4)
    assert first["betti0_error_mean"] == pytest.approx(2.0) and first["betti0_error_std"] == pytest.approx(1.0)
    assert "cldice_mean" not in rows[1] and "betti0_error_mean" not in rows[1]
    table = to_markdown(rows).splitlines()
    assert table[0] == (
        "| trainer | K | runs | Dice (mean ± std) | class 1 | class 2 | binary clDice | class 1 clDice "
        "| class 2 clDice | binary Betti-0 error |"
    )
    assert table[2] == (
        "| A | 1 | 2 | 0.4000 ± 0.1000 | 0.3000 ± 0.1000 | 0.5000 ± 0.1000 | 0.3000 ± 0.1000 | 0.2000 ± 0.1000 "
        "| 0.4000 ± 0.1000 | 2.00 ± 1.00 |"
    )
    assert table[3] == "| A | 3 | 1 | 0.8000 ± 0.0000 | 0.8000 ± 0.0000 | 0.8000 ± 0.0000 | - | - | - | - |"
    mixed = summarise([_record("B", 1, 0, 0.5, 0.5, (1.0, 1.0, 1.0, 0)), _record("B", 1, 1, 0.5, 0.5)])
    assert "cldice_mean" not in mixed[0]  # no mean over only the runs that measured it


def test_trainer_prefixed_settings_apply_to_that_trainer_only():
    settings = ["num_epochs=1", "nnUNetTrainerDINOv3FFA:agg_heads=2", 'encoder_kwargs={"a":1}']
    assert settings_for("nnUNetTrainer", settings) == ["num_epochs=1", 'encoder_kwargs={"a":1}']
    assert "agg_heads=2" in settings_for("nnUNetTrainerDINOv3FFA", settings)


@pytest.mark.e2e
@pytest.mark.slow
def test_experiment_grid_runs_writes_tables_and_resumes(planned_workspace):
    ws = planned_workspace
    out = ws.root / "experiment"
    command = [
        "nnunet-fm",
        "experiment",
        "-d",
        str(DATASET_ID),
        "--trainers",
        "nnUNetTrainer",
        "--shots",
        "1,2",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--iterations",
        "2",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--set",
        "num_val_iterations_per_epoch=1",
    ]
    ws.run(*command)
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["trainer"], r["shots"], r["runs"]) for r in rows] == [
        ("nnUNetTrainer", "1", "1"),
        ("nnUNetTrainer", "2", "1"),
    ]
    table = (out / "results.md").read_text()
    assert (out / "dice_vs_k.png").stat().st_size > 0 and "± " in table
    assert "binary clDice" in table and "| - |" not in table  # the fresh runs carry the vessel metrics
    assert all(float(r["betti0_error_mean"]) >= 0 and 0 <= float(r["cldice_mean"]) <= 1 for r in rows)
    records = sorted((out / "runs").glob("*.json"))
    assert len(records) == 2
    # interruption: one run's record is lost -> only that run is redone, the other is skipped
    kept_mtime = records[0].stat().st_mtime_ns
    records[1].unlink()
    output = ws.run(*command)
    assert records[1].is_file() and records[0].stat().st_mtime_ns == kept_mtime
    assert "done earlier, skipped" in output
