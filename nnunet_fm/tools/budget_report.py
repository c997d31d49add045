"""Wall time of the DINOv3-FFA default budget before and after epochs became passes over the training cases.

Trains the demo flagship (tiny random encoder, CPU) through stock ``nnUNetv2_train`` twice for a few epochs:
with nnU-Net's epoch (250 training + 50 validation iterations, the plugin's previous default) and with the
current default (``num_iterations_per_epoch: null``: one pass over the few-shot cases), reads the epoch times
nnU-Net logs and extrapolates both to the 1000-epoch default.

    python -m nnunet_fm.tools.budget_report --workdir budget_run [--epochs 2]
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

from nnunet_fm.demo import DEMO_DATASET_ID, FLAGSHIP, add_plans, prepare_dataset
from nnunet_fm.pipeline import Workspace

VARIANTS = {
    "nnU-Net epoch (previous default)": ["num_iterations_per_epoch=250", "num_val_iterations_per_epoch=50"],
    "one pass over the cases (default)": [],
}


def epoch_times(log_folder: Path) -> list[float]:
    """The 'Epoch time' values nnU-Net logged in a fold folder."""
    text = "".join(p.read_text() for p in sorted(log_folder.glob("training_log_*.txt")))
    return [float(v) for v in re.findall(r"Epoch time: ([0-9.]+) s", text)]


def budget_lines(text: str) -> str:
    found = re.findall(r"Budget: (.*)", text)
    return found[-1].strip() if found else "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="budget_run")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)
    ws = Workspace(Path(args.workdir), log=Path(args.workdir) / "commands.log")
    prepare_dataset(ws)
    rows = []
    for index, (label, settings) in enumerate(VARIANTS.items()):
        name = f"3d_budget_{index}"
        configuration = add_plans(
            ws, DEMO_DATASET_ID, "dinov3_ffa", [*FLAGSHIP["set"], *settings, f"num_epochs={args.epochs}"], name
        )
        trainer = FLAGSHIP["trainer"]
        ws.run(
            "nnUNetv2_train",
            str(DEMO_DATASET_ID),
            configuration,
            "0",
            "-tr",
            trainer,
            "-device",
            "cpu",
            extra_env={"nnUNet_n_proc_DA": "0"},
        )
        fold = ws.results / ws.dataset_folder(DEMO_DATASET_ID).name / f"{trainer}__nnUNetPlans__{configuration}"
        fold = fold / "fold_0"
        times = epoch_times(fold)
        log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
        per_epoch = statistics.median(times)
        rows.append((label, budget_lines(log), per_epoch, per_epoch * 1000 / 3600))
    print("| budget | per epoch (median of measured) | 1000 epochs (extrapolated) |")
    print("|---|---|---|")
    for label, budget, per_epoch, hours in rows:
        print(f"| {label}: {budget} | {per_epoch:.1f} s | {hours:.1f} h |")
    print(f"\nratio previous / new: {rows[0][2] / rows[1][2]:.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
