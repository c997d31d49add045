"""scripts/gpu_check.sh's tool: its pass/fail rules, and its CPU dry run over every registered family."""

import math
import re

import pytest

from nnunet_fm import registry
from nnunet_fm.tools import gpu_check
from nnunet_fm.tools.gpu_check import Row, failures, format_table, memory_ratio, stock_patch


def _row(**values) -> Row:
    base = dict(patch=[64, 336, 336], batch=2, estimate_gb=10.0, family_step_s=0.5, stock_step_s=0.25)
    return Row("dinov3_ffa", **{**base, "prediction_ok": True, **values})


def test_memory_rule_fails_only_above_the_tolerance():
    assert failures(_row(measured_gb=12.0)) == []  # exactly 1.2x: allowed
    assert failures(_row(measured_gb=3.0)) == []  # far below: the estimate is an upper bound, not a failure
    [message] = failures(_row(measured_gb=12.1))
    assert "1.21x the estimate 10.00 GB" in message
    assert failures(_row(measured_gb=11.0), tolerance=0.05)  # the tolerance is honoured
    assert failures(_row(measured_gb=None)) == []  # CPU: nothing measured, nothing to compare
    assert memory_ratio(_row(measured_gb=5.0)) == pytest.approx(0.5)
    assert memory_ratio(_row(measured_gb=5.0, estimate_gb=None)) is None  # nnU-Net's own network: no estimate


def test_failed_prediction_or_error_fails_and_shows_in_the_table():
    assert failures(_row(prediction_ok=False)) == ["dinov3_ffa: prediction failed"]
    assert failures(_row(error="nnUNetv2_train failed")) == ["dinov3_ffa: nnUNetv2_train failed"]
    table = format_table([_row(measured_gb=13.0), _row(prediction_ok=False)], "cuda")
    rows = [line for line in table.splitlines() if line.startswith("| dinov3_ffa")]
    assert rows[0].split(" | ")[4:7] == ["13.00", "1.30", "0.500"]
    assert rows[0].endswith("| 2.00 | ok |") and rows[1].endswith("| FAILED |")
    assert "FAIL dinov3_ffa: measured training peak 13.00 GB is 1.30x" in table
    assert "n/a (CPU)" in format_table([_row()], "cpu")


def test_stock_patch_pads_to_the_unet_divisibility():
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]  # total stride 4 x 16 x 16
    assert stock_patch([64, 336, 336], strides) == [64, 336, 336]
    assert stock_patch([2, 20, 33], strides) == [4, 32, 48]


def test_bad_family_name_is_a_one_line_user_error(tmp_path, capsys):
    assert gpu_check.main(["--dry-run", "--workdir", str(tmp_path), "--families", "no_such_family"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nnunet-fm: error: --families: unknown no_such_family") and "Traceback" not in err


@pytest.mark.slow
def test_dry_run_covers_every_family(tmp_path, capsys):
    assert gpu_check.main(["--dry-run", "--workdir", str(tmp_path)]) == 0
    table = (tmp_path / "gpu_check.md").read_text()
    assert table in capsys.readouterr().out
    for family in registry.families():
        [line] = [line for line in table.splitlines() if line.startswith(f"| {family.name} |")]
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        patch, estimate, measured, family_s, stock_s = cells[1], cells[3], cells[4], cells[6], cells[7]
        assert cells[-1] == "ok"
        assert re.fullmatch(r"\d+x\d+x\d+", patch) and int(cells[2]) >= 1
        assert measured == "n/a (CPU)"
        if family.network is None:  # nnU-Net's own network: plans add gives no estimate
            assert estimate == "n/a"
        else:
            assert math.isfinite(float(estimate)) and float(estimate) > 0
        for seconds in (family_s, stock_s.split(" ")[0]):
            assert math.isfinite(float(seconds)) and float(seconds) > 0
