"""Drive stock ``nnUNetv2_*`` commands (and ``nnunet-fm``) as subprocesses inside one workspace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_fm.environment import plugin_env


@dataclass
class Workspace:
    """nnUNet_raw / nnUNet_preprocessed / nnUNet_results under one folder, plus the plugin's trainer path."""

    root: Path
    extra_trainer_folders: list[str] = field(default_factory=list)
    log: Path | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        for folder in (self.raw, self.preprocessed, self.results):
            folder.mkdir(parents=True, exist_ok=True)

    @property
    def raw(self) -> Path:
        return self.root / "nnUNet_raw"

    @property
    def preprocessed(self) -> Path:
        return self.root / "nnUNet_preprocessed"

    @property
    def results(self) -> Path:
        return self.root / "nnUNet_results"

    def env(self) -> dict[str, str]:
        env = plugin_env(extra_trainer_folders=self.extra_trainer_folders)
        env.update(
            nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(self.preprocessed), nnUNet_results=str(self.results)
        )
        env.setdefault("nnUNet_compile", "f")
        return env

    def run(self, *command: str, extra_env: dict[str, str] | None = None) -> str:
        """Run a command with the workspace env; raise with its output tail when it fails."""
        command = [_resolve(command[0]), *command[1:]]
        env = {**self.env(), **(extra_env or {})}
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        output = proc.stdout + proc.stderr
        if self.log is not None:
            with open(self.log, "a") as handle:
                handle.write(f"$ {' '.join(command)}\n{output}\n")
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(command)}` failed with exit code {proc.returncode}:\n{output[-4000:]}")
        return output

    def dataset_folder(self, dataset_id: int) -> Path:
        return next(self.raw.glob(f"Dataset{dataset_id:03d}_*"))


def _resolve(executable: str) -> str:
    """Console scripts of the running interpreter's environment take precedence over PATH."""
    candidate = Path(sys.executable).parent / executable
    return str(candidate) if candidate.exists() else executable


def mean_dice(summary_file: Path) -> dict:
    """Per-class and mean Dice from nnU-Net's evaluation ``summary.json``."""
    summary = json.loads(Path(summary_file).read_text())
    per_class = {key: round(value["Dice"], 4) for key, value in summary["mean"].items()}
    return {"per_class_dice": per_class, "mean_dice": round(summary["foreground_mean"]["Dice"], 4)}


def train_predict_evaluate(
    ws: Workspace,
    dataset_id: int,
    configuration: str,
    trainer: str,
    fold: int | str = 0,
    device: str = "cpu",
    predict_args: tuple[str, ...] = (),
) -> dict:
    """Stock commands: train (--npz), predict the test images, evaluate against labelsTs."""
    folder = ws.dataset_folder(dataset_id)
    ws.run(
        "nnUNetv2_train",
        str(dataset_id),
        configuration,
        str(fold),
        "-tr",
        trainer,
        "--npz",
        "-device",
        device,
        extra_env={"nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "0")},
    )
    prediction = ws.root / "predictions" / f"{trainer}__{configuration}"
    ws.run(
        "nnUNetv2_predict",
        "-i",
        str(folder / "imagesTs"),
        "-o",
        str(prediction),
        "-d",
        str(dataset_id),
        "-c",
        configuration,
        "-tr",
        trainer,
        "-f",
        str(fold),
        "-device",
        device,
        *predict_args,
    )
    model = ws.results / folder.name / f"{trainer}__nnUNetPlans__{configuration}"
    ws.run(
        "nnUNetv2_evaluate_folder",
        str(folder / "labelsTs"),
        str(prediction),
        "-djfile",
        str(model / "dataset.json"),
        "-pfile",
        str(model / "plans.json"),
    )
    return {"prediction": str(prediction), **mean_dice(prediction / "summary.json")}
