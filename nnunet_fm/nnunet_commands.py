"""Drive stock ``nnUNetv2_*`` commands (and ``nnunet-fm``) as subprocesses inside one workspace."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_fm.environment import plugin_env


def run_in_own_group(command: list[str], env: dict[str, str], grace_s: float = 30.0) -> subprocess.CompletedProcess:
    """``subprocess.run`` in a new process group; if this process is interrupted (KeyboardInterrupt, or SIGTERM
    turned into SystemExit by the CLI) the whole group gets SIGTERM, then SIGKILL after ``grace_s``, so neither
    the command nor its data-augmentation workers outlive it."""
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as process:
        try:
            stdout, stderr = process.communicate()
        except BaseException:
            _stop_group(process, grace_s)
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _stop_group(process: subprocess.Popen, grace_s: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_s)
            if sig == signal.SIGTERM:
                os.killpg(process.pid, signal.SIGKILL)  # workers the command left behind
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


@dataclass
class Workspace:
    """nnUNet_raw / nnUNet_preprocessed / nnUNet_results (default: under ``root``) plus the plugin's trainers."""

    root: Path
    extra_trainer_folders: list[str] = field(default_factory=list)
    log: Path | None = None
    raw: Path | None = None
    preprocessed: Path | None = None
    results: Path | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.raw = Path(self.raw or self.root / "nnUNet_raw")
        self.preprocessed = Path(self.preprocessed or self.root / "nnUNet_preprocessed")
        self.results = Path(self.results or self.root / "nnUNet_results")
        for folder in (self.root, self.raw, self.preprocessed, self.results):
            folder.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_environment(cls, root: str | Path, log: Path | None = None) -> Workspace:
        """A workspace on the user's own nnU-Net folders (env vars); ``root`` holds predictions and reports."""
        missing = [v for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results") if not os.environ.get(v)]
        if missing:
            from nnunet_fm.errors import UserInputError

            raise UserInputError(f"{', '.join(missing)} not set; export them (see `nnunet-fm env`).")
        return cls(
            root,
            log=log,
            raw=os.environ["nnUNet_raw"],
            preprocessed=os.environ["nnUNet_preprocessed"],
            results=os.environ["nnUNet_results"],
        )

    def env(self) -> dict[str, str]:
        env = plugin_env(extra_trainer_folders=self.extra_trainer_folders)
        env.update(
            nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(self.preprocessed), nnUNet_results=str(self.results)
        )
        env.setdefault("nnUNet_compile", "f")
        # nnU-Net's export/evaluation pools spawn this many processes, each importing torch: on small CPU
        # machines that costs minutes per command, so default to 1 unless the user chose a value
        env.setdefault("nnUNet_def_n_proc", "1")
        return env

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        """This process's nnU-Net env vars pointed at the workspace for the duration (in-process API calls)."""
        saved = {key: os.environ.get(key) for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
        os.environ.update({key: str(value) for key, value in self.env().items() if key in saved})
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    @property
    def processes(self) -> str:
        """Worker processes for nnU-Net's predict/evaluate commands (``nnUNet_def_n_proc``)."""
        return self.env()["nnUNet_def_n_proc"]

    def run(self, *command: str, extra_env: dict[str, str] | None = None) -> str:
        """Run a command with the workspace env; raise with its output tail when it fails."""
        command = [_resolve(command[0]), *command[1:]]
        env = {**self.env(), **(extra_env or {})}
        proc = run_in_own_group(command, env)
        output = proc.stdout + proc.stderr
        if self.log is not None:
            with open(self.log, "a") as handle:
                handle.write(f"$ {' '.join(command)}\n{output}\n")
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(command)}` failed with exit code {proc.returncode}:\n{output[-4000:]}")
        return output

    def dataset_folder(self, dataset_id: int) -> Path:
        return next(self.raw.glob(f"Dataset{dataset_id:03d}_*"))

    def model_folder(self, dataset_id: int, trainer: str, configuration: str, plans: str = "nnUNetPlans") -> Path:
        """The results folder nnU-Net trains ``trainer`` / ``plans`` / ``configuration`` into."""
        from nnunetv2.utilities.file_path_utilities import convert_trainer_plans_config_to_identifier

        identifier = convert_trainer_plans_config_to_identifier(trainer, plans, configuration)
        return self.results / self.dataset_folder(dataset_id).name / identifier


def _resolve(executable: str) -> str:
    """Console scripts of the running interpreter's environment take precedence over PATH."""
    candidate = Path(sys.executable).parent / executable
    return str(candidate) if candidate.exists() else executable


def mean_dice(summary_file: Path) -> dict:
    """Score record (Dice; clDice, Betti-0 error, HD95 when present) of an evaluation ``summary.json``."""
    from nnunet_fm.evaluate_command import summary_scores

    return summary_scores(json.loads(Path(summary_file).read_text()))


def plan_and_preprocess(ws: Workspace, dataset_id: int) -> None:
    """Stock ``nnUNetv2_plan_and_preprocess -c 3d_fullres --verify_dataset_integrity``."""
    ws.run(
        "nnUNetv2_plan_and_preprocess",
        "-d",
        str(dataset_id),
        "-c",
        "3d_fullres",
        "--verify_dataset_integrity",
        "-np",
        ws.processes,
        "-npfp",
        ws.processes,
    )


def plan_like_source(
    ws: Workspace, source_id: int, target_id: int, plans: str = "nnUNetPlans", configuration: str = "3d_fullres"
) -> None:
    """Plan and preprocess a derived dataset (e.g. pseudo-labelled) with the source dataset's plans.

    Same normalisation statistics, spacing, patch size and plugin configurations as the source, with stock
    commands: plan (integrity check, no preprocessing), ``nnUNetv2_move_plans_between_datasets``, preprocess.
    Planning the derived dataset from scratch would count its ignore-label voxels as foreground in nnU-Net's
    intensity fingerprint and so change the CT normalisation.
    """
    target = str(target_id)
    ws.run(
        "nnUNetv2_plan_and_preprocess",
        *("-d", target, "-c", configuration, "--verify_dataset_integrity", "--no_pp", "-npfp", ws.processes),
    )
    ws.run("nnUNetv2_move_plans_between_datasets", "-s", str(source_id), "-t", target, "-sp", plans, "-tp", plans)
    ws.run("nnUNetv2_preprocess", "-d", target, "-plans_name", plans, "-c", configuration, "-np", ws.processes)


def predict(
    ws: Workspace,
    dataset_id: int,
    configuration: str,
    trainer: str,
    fold: int | str,
    out: Path,
    device: str = "cpu",
    extra_args: tuple[str, ...] = (),
) -> Path:
    """``nnUNetv2_predict`` of the dataset's imagesTs into ``out``."""
    ws.run(
        "nnUNetv2_predict",
        "-i",
        str(ws.dataset_folder(dataset_id) / "imagesTs"),
        "-o",
        str(out),
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
        "-npp",
        ws.processes,
        "-nps",
        ws.processes,
        *extra_args,
    )
    return out


def train_predict_evaluate(
    ws: Workspace,
    dataset_id: int,
    configuration: str,
    trainer: str,
    fold: int | str = 0,
    device: str = "cpu",
    predict_args: tuple[str, ...] = (),
    resume: bool = False,
) -> dict:
    """Stock commands: train (--npz; --c when ``resume``), predict the test images, evaluate against labelsTs."""
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
        *(("--c",) if resume else ()),
        extra_env={"nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "0")},
    )
    return predict_evaluate(ws, dataset_id, configuration, trainer, fold, device, predict_args)


def predict_evaluate(
    ws: Workspace,
    dataset_id: int,
    configuration: str,
    trainer: str,
    fold: int | str = 0,
    device: str = "cpu",
    predict_args: tuple[str, ...] = (),
    suffix: str = "",
) -> dict:
    """Stock ``nnUNetv2_predict`` of imagesTs, then ``nnunet-fm evaluate`` against labelsTs (in this process).

    Returns the prediction folder and the score record of ``evaluate_command.score_folder``: nnU-Net's Dice per
    class and mean, plus clDice, Betti-0 error and HD95 per class and for the merged foreground.
    """
    from nnunet_fm.evaluate_command import score_folder

    prediction = ws.root / "predictions" / f"{trainer}__{configuration}__fold{fold}{suffix}"
    predict(ws, dataset_id, configuration, trainer, fold, prediction, device, predict_args)
    model = ws.model_folder(dataset_id, trainer, configuration)
    labels = ws.dataset_folder(dataset_id) / "labelsTs"
    if ws.log is not None:  # the equivalent command, for the record
        with open(ws.log, "a") as handle:
            handle.write(f"$ nnunet-fm evaluate {labels} {prediction} -djfile {model / 'dataset.json'} ")
            handle.write(f"-pfile {model / 'plans.json'} -np {ws.processes}  (run in-process)\n")
    scores = score_folder(labels, prediction, model / "dataset.json", model / "plans.json", int(ws.processes))
    return {"prediction": str(prediction), **scores}
