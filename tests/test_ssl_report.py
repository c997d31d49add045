"""The semi-supervised comparison's summary (``nnunet_fm.tools.ssl_report``) on hand-made records."""

import json

import pytest

from nnunet_fm.nnunet_commands import Workspace
from nnunet_fm.tools.ssl_report import METHODS, finished_records, main, summarise, to_markdown


def _record(method: str, shots: int, seed: int, artery: float, vein: float, betti: int | None = None) -> dict:
    """A step record; with ``betti`` also the vessel metrics (clDice = Dice - 0.1 here), else an old record."""
    record = {
        "method": method,
        "shots": shots,
        "seed": seed,
        "mean_dice": (artery + vein) / 2,
        "per_class_dice": {"1": artery, "2": vein},
    }
    if betti is not None:
        record["per_class_cldice"] = {"1": artery - 0.1, "2": vein - 0.1}
        record["binary_cldice"], record["binary_betti0_error"] = (artery + vein) / 2 - 0.1, betti
    return record


def test_summary_is_mean_and_population_std_over_seeds_per_k_and_method():
    records = [
        _record("Mean Teacher", 3, 0, 0.8, 0.6, 2),
        _record("Mean Teacher", 3, 1, 0.6, 0.4, 4),
        _record("labelled only", 3, 0, 0.5, 0.1),  # cached before the vessel metrics: '-' cells
        _record("labelled only", 1, 0, 0.2, 0.0),
    ]
    rows = summarise(records)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("labelled only", "1", "1"),
        ("labelled only", "3", "1"),
        ("Mean Teacher", "3", "2"),
    ]  # K first, then the methods in METHODS order
    mean_teacher = rows[2]
    assert mean_teacher[3] == "0.6000 ± 0.1000"  # mean Dice (0.7, 0.5)
    assert mean_teacher[4] == "0.7000 ± 0.1000" and mean_teacher[5] == "0.5000 ± 0.1000"
    # binary clDice (0.6, 0.4), artery clDice (0.7, 0.5), vein clDice (0.5, 0.3), binary Betti-0 error (2, 4)
    assert mean_teacher[6:10] == ["0.5000 ± 0.1000", "0.6000 ± 0.1000", "0.4000 ± 0.1000", "3.00 ± 1.00"]
    assert rows[1][6:10] == ["-", "-", "-", "-"]
    assert METHODS.index("labelled only") < METHODS.index("Mean Teacher")
    table = to_markdown(records)
    assert table.splitlines()[0] == (
        "| method | K | seeds | mean Dice | artery | vein | binary clDice | artery clDice | vein clDice "
        "| binary Betti-0 error | per seed (mean Dice) |"
    )
    assert mean_teacher[10] == "s0: 0.7000, s1: 0.5000"
    assert len(table.splitlines()) == 2 + len(rows)


@pytest.mark.parametrize("missing", METHODS)
def test_methods_without_runs_are_left_out(missing):
    records = [_record(m, 3, 0, 0.5, 0.5) for m in METHODS if m != missing]
    assert missing not in [r[0] for r in summarise(records)]


def test_table_only_reads_the_finished_steps_and_trains_nothing(tmp_path):
    cache = tmp_path / "runs" / "k1_s2"
    cache.mkdir(parents=True)
    for name, artery in (("labelled_only", 0.9), ("Mean_Teacher_student", 0.7), ("teacher", 0.1)):
        score = {"per_class_dice": {"1": artery, "2": 0.5}, "mean_dice": (artery + 0.5) / 2}
        (cache / f"{name}.json").write_text(json.dumps(score))
    records = finished_records(Workspace(tmp_path), 1, 2)
    assert [(r["method"], r["seed"], r["per_class_dice"]["1"]) for r in records] == [
        ("labelled only", 2, 0.9),
        ("Mean Teacher (student)", 2, 0.7),
    ]  # the teacher's own scores are not a row
    main(["--workdir", str(tmp_path), "--shots", "1", "--seeds", "2", "--table-only"])
    table = (tmp_path / "ssl_report.md").read_text()
    assert "| Mean Teacher (student) | 1 | 1 | 0.6000 ± 0.0000 |" in table and "| - | - | - | - | s2: 0.7000 |" in table
    assert not list(tmp_path.rglob("Dataset*"))  # no dataset written, nothing trained


def test_ablate_trains_one_configuration_with_the_report_schedule_and_records_it(tmp_path, monkeypatch):
    import nnunet_fm.tools.ssl_report as ssl_report

    calls = []

    def fake_train(ws, dataset_id, trainer, settings, name, device, fold):
        calls.append((dataset_id, trainer, settings, name, device, fold))
        return {"per_class_dice": {"1": 0.9, "2": 0.4}, "mean_dice": 0.65}

    monkeypatch.setattr(ssl_report, "train_config", fake_train)
    monkeypatch.setattr(ssl_report, "student_scores", lambda *a: {"per_class_dice": {"1": 0.9}, "mean_dice": 0.7})
    main(
        [
            "--workdir",
            str(tmp_path),
            "--ablate",
            "925",
            "--name",
            "3d_abl",
            "--epochs",
            "4",
            "--set",
            "ssl=mean_teacher",
        ]
    )
    assert calls == [
        (
            925,
            "nnUNetTrainerUNetFewShot",
            [
                "num_epochs=4",
                "num_iterations_per_epoch=10",
                "num_val_iterations_per_epoch=1",
                "few_shot_k=null",
                "ssl=mean_teacher",
                "predict_with=teacher",  # the record is the teacher's, the student is scored by switching
            ],
            "3d_abl",
            "cpu",
            "all",
        )
    ]
    record = json.loads((tmp_path / "ablations" / "3d_abl.json").read_text())
    assert record["dataset"] == 925 and record["mean_dice"] == 0.65 and record["settings"][-2] == "ssl=mean_teacher"
    assert record["student"]["mean_dice"] == 0.7  # a Mean Teacher run is scored with its student too
    assert not (tmp_path / "runs").exists()  # nothing of the report itself ran


def test_ablations_table_groups_repeats_and_reports_mean_and_std(tmp_path, capsys):
    folder = tmp_path / "ablations"
    folder.mkdir()
    schedule = ["num_epochs=10", "num_iterations_per_epoch=10", "num_val_iterations_per_epoch=1", "few_shot_k=null"]
    for name, dataset, extra, dice in (
        ("3d_aa", 942, ["ssl=mean_teacher", "consistency_weight=0"], (0.9, 0.5)),
        ("3d_aa_r1", 942, ["ssl=mean_teacher", "consistency_weight=0"], (0.9, 0.9)),
        ("3d_mt", 941, ["ssl=mean_teacher"], (0.6, 0.4)),
        ("3d_st_r1", 940, [], (0.8, 0.6)),
    ):
        record = {"dataset": dataset, "settings": [*schedule, *extra], "per_class_dice": dict(zip("12", dice))}
        if name == "3d_mt":
            vessel = {"binary_cldice": 0.75, "per_class_cldice": {"1": 0.7, "2": 0.8}, "binary_betti0_error": 2}
            record["student"] = {"per_class_dice": {"1": 0.8, "2": 0.8}, "mean_dice": 0.8, **vessel}
        (folder / f"{name}.json").write_text(json.dumps({**record, "mean_dice": sum(dice) / 2}))
    (folder / "notes.json").write_text("{}")  # not a training record: left out
    main(["--workdir", str(tmp_path), "--ablations-table"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6  # header, rule, three groups and the student of the Mean Teacher run
    assert lines[3].startswith("| 3d_mt | 941 | ssl=mean_teacher | 1 | 0.5000 ± 0.0000 |")
    assert lines[4] == (
        "| 3d_mt (student) | 941 | ssl=mean_teacher | 1 | 0.8000 ± 0.0000 | 0.8000 ± 0.0000 | 0.8000 ± 0.0000 "
        "| 0.7500 ± 0.0000 | 0.7000 ± 0.0000 | 0.8000 ± 0.0000 | 2.00 ± 0.00 | 0.8000 |"
    )  # a new record: its vessel metrics beside Dice
    assert lines[2] == (
        "| 3d_aa | 942 | ssl=mean_teacher consistency_weight=0 | 2 | 0.8000 ± 0.1000 | 0.9000 ± 0.0000 "
        "| 0.7000 ± 0.2000 | - | - | - | - | 0.7000, 0.9000 |"
    )  # records from before the vessel metrics render '-'
    assert lines[5].startswith("| 3d_st | 940 | (none) | 1 | 0.7000 ± 0.0000 |")
