"""Wall time of the DINOv3-FFA default budget before and after epochs became passes over the training cases.

Trains the demo flagship (tiny random encoder, CPU) through stock ``nnUNetv2_train`` for a few epochs with the
current default (``num_iterations_per_epoch: null``: one pass over the few-shot cases) and with a tenth of
nnU-Net's epoch (25 training + 5 validation iterations), reads the epoch times nnU-Net logs, fits
``epoch time = fixed + per_iteration * iterations`` through the two, and extrapolates to the previous default
(250 + 50 iterations per epoch) and to 1000 epochs. A full 250-iteration epoch takes ~10 minutes on this CPU.

    python -m nnunet_fm.tools.budget_report --workdir budget_run [--epochs 2]
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

from nnunet_fm.demo import DEMO_DATASET_ID, FLAGSHIP, add_plans, prepare_dataset
from nnunet_fm.nnunet_commands import Workspace

SHORT_NNUNET_EPOCH = ["num_iterations_per_epoch=25", "num_val_iterations_per_epoch=5"]
NNUNET_ITERATIONS = 250 + 50  # training + validation iterations of nnU-Net's epoch


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
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    ws = Workspace(Path(args.workdir), log=Path(args.workdir) / "commands.log")
    prepare_dataset(ws)
    measured = {}
    for name, settings in (("3d_budget_pass", []), ("3d_budget_nnunet_tenth", SHORT_NNUNET_EPOCH)):
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
        fold = ws.model_folder(DEMO_DATASET_ID, trainer, configuration)
        log = "".join(p.read_text() for p in (fold / "fold_0").glob("training_log_*.txt"))
        train, val = (int(v) for v in re.findall(r"x (\d+) iterations = .*validation (\d+) iteration", log)[-1])
        measured[name] = (train + val, statistics.median(epoch_times(fold / "fold_0")), budget_lines(log))
    (n_pass, t_pass, budget_pass), (n_tenth, t_tenth, _) = (
        measured["3d_budget_pass"],
        measured["3d_budget_nnunet_tenth"],
    )
    per_iteration = (t_tenth - t_pass) / (n_tenth - n_pass)
    fixed = t_pass - per_iteration * n_pass
    t_nnunet = fixed + per_iteration * NNUNET_ITERATIONS
    print(
        f"measured: {n_pass} iterations/epoch -> {t_pass:.2f} s; {n_tenth} -> {t_tenth:.2f} s "
        f"(fit: {fixed:.2f} s fixed + {per_iteration:.3f} s per iteration)"
    )
    print("| budget | iterations per epoch (train + val) | per epoch | 1000 epochs |")
    print("|---|---|---|---|")
    print(
        f"| previous default (nnU-Net epoch) | 250 + 50 | {t_nnunet:.1f} s (extrapolated) | "
        f"{t_nnunet * 1000 / 3600:.1f} h |"
    )
    print(
        f"| default: one pass ({budget_pass}) | {n_pass} | {t_pass:.2f} s (measured) | {t_pass * 1000 / 3600:.2f} h |"
    )
    print(f"\nratio previous / new wall time: {t_nnunet / t_pass:.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
