"""GPU readiness in one command: every registered family, through the stock commands, on this machine.

For each family (``plans_templates/*.json``): ``nnunet-fm plans add`` at the template's preset geometry with a
random-weight encoder and a few iterations -> ``nnUNetv2_train`` -> ``nnUNetv2_predict`` on demo data. Training and
prediction run nnU-Net's own entry points in a child process that reports CUDA ``max_memory_allocated`` (training:
the peak of the training loop, before nnU-Net's final validation). The peak is compared with the estimate ``plans
add`` prints (:mod:`nnunet_fm.memory_plan`), and the family trainer's own ``train_step`` with stock
``nnUNetTrainer``'s on the parent ``3d_fullres`` U-Net at the same patch (padded up to the U-Net's divisibility)
and batch, each under its own autocast policy, on random batches.

    python -m nnunet_fm.tools.gpu_check [--dry-run] [--workdir DIR] [--families NAME ...]

``--dry-run``: CPU, each family's tiny test settings, tiny data, one iteration (CI). Exit 1 when a family fails,
or (CUDA) when a measured peak exceeds its estimate by more than :data:`MEMORY_TOLERANCE`; 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnunet_fm.demo_data import DemoSpec
from nnunet_fm.errors import UserInputError, report
from nnunet_fm.tools.tiny_settings import tiny_settings

#: a measured training peak may exceed the estimate by this fraction before the check fails
MEMORY_TOLERANCE = 0.20
GIB = 2**30
#: the line prefix a child process reports its JSON result with
MARKER = "GPU_CHECK_RESULT "
#: the hidden subcommand of the child process
CHILD = "_family"


@dataclass(frozen=True)
class Mode:
    """Data, budget and timing of one kind of run."""

    dataset_id: int
    spec: DemoSpec
    num_train: int
    num_test: int
    iterations: int
    warmup_steps: int
    timed_steps: int
    tiny: bool


REAL = Mode(921, DemoSpec(shape=(64, 128, 128), spacing=(1.5, 0.7, 0.7)), 5, 1, 5, 3, 10, tiny=False)
DRY_RUN = Mode(922, DemoSpec(shape=(16, 48, 48), spacing=(1.5, 0.7, 0.7)), 5, 1, 1, 1, 2, tiny=True)


@dataclass
class Row:
    """One family's results; None: not measured (or not applicable)."""

    family: str
    patch: list[int] | None = None
    batch: int | None = None
    estimate_gb: float | None = None
    measured_gb: float | None = None
    family_step_s: float | None = None
    stock_step_s: float | None = None
    stock_patch: list[int] | None = None
    prediction_ok: bool = False
    error: str | None = None
    notes: list[str] = field(default_factory=list)


def memory_ratio(row: Row) -> float | None:
    """Measured peak / estimate, when both exist."""
    if row.measured_gb is None or not row.estimate_gb:
        return None
    return row.measured_gb / row.estimate_gb


def failures(row: Row, tolerance: float = MEMORY_TOLERANCE) -> list[str]:
    """Why ``row`` fails the check: an error, a failed prediction, or a peak above (1 + tolerance) x estimate."""
    found = []
    if row.error:
        found.append(f"{row.family}: {row.error}")
    elif not row.prediction_ok:
        found.append(f"{row.family}: prediction failed")
    ratio = memory_ratio(row)
    if ratio is not None and ratio > 1 + tolerance:
        found.append(
            f"{row.family}: measured training peak {row.measured_gb:.2f} GB is {ratio:.2f}x the estimate "
            f"{row.estimate_gb:.2f} GB (more than {1 + tolerance:.2f}x)"
        )
    return found


def _num(value: float | None, digits: int, missing: str = "n/a") -> str:
    return missing if value is None else f"{value:.{digits}f}"


def format_table(rows: list[Row], device: str) -> str:
    """The markdown table (and a line per failure) of a check on ``device`` ("cuda" or "cpu")."""
    measured_missing = "n/a (CPU)" if device != "cuda" else "n/a"
    lines = [
        "| family | patch | batch | estimated training GB | measured max_memory_allocated GB | measured / estimate | "
        "s/step family | s/step stock nnU-Net (patch) | family / stock | prediction |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = memory_ratio(row)
        step_ratio = (
            row.family_step_s / row.stock_step_s if row.family_step_s is not None and row.stock_step_s else None
        )
        stock = _num(row.stock_step_s, 3)
        if row.stock_patch is not None and row.stock_patch != row.patch:
            stock += f" (padded to {'x'.join(map(str, row.stock_patch))})"
        lines.append(
            "| "
            + " | ".join(
                [
                    row.family,
                    "x".join(map(str, row.patch)) if row.patch else "?",
                    str(row.batch) if row.batch is not None else "?",
                    _num(row.estimate_gb, 2),
                    _num(row.measured_gb, 2, measured_missing),
                    _num(ratio, 2),
                    _num(row.family_step_s, 3),
                    stock,
                    _num(step_ratio, 2),
                    "ok" if row.prediction_ok and not row.error else "FAILED",
                ]
            )
            + " |"
        )
    for row in rows:
        lines += [f"- {row.family}: {note}" for note in row.notes]
    lines += [f"- FAIL {line}" for row in rows for line in failures(row)]
    return "\n".join(lines)


# --- child processes: nnU-Net's own entry points, with CUDA peak memory -----------------------------------------


def _peak_bytes() -> int:
    import torch

    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else 0


def _child_train(argv: list[str]) -> dict:
    """``nnUNetv2_train ARGV`` in this process; the training loop's peak (before nnU-Net's final validation)."""
    from nnunetv2.run.run_training import run_training_entry
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    record: dict[str, Any] = {}
    original = nnUNetTrainer.run_training

    def run_training(self) -> None:
        start = time.perf_counter()
        original(self)
        record.update(train_peak=_peak_bytes(), train_loop_s=time.perf_counter() - start)

    nnUNetTrainer.run_training = run_training
    sys.argv = ["nnUNetv2_train", *argv]
    start = time.perf_counter()
    run_training_entry()
    return {**record, "peak": _peak_bytes(), "wall_s": time.perf_counter() - start}


def _child_predict(argv: list[str]) -> dict:
    """``nnUNetv2_predict ARGV`` in this process; its peak."""
    from nnunetv2.inference.predict_from_raw_data import predict_entry_point

    sys.argv = ["nnUNetv2_predict", *argv]
    start = time.perf_counter()
    predict_entry_point()
    return {"peak": _peak_bytes(), "wall_s": time.perf_counter() - start}


def _random_batch(trainer: Any, patch: list[int], batch_size: int) -> dict:
    import torch
    import torch.nn.functional as F

    labels = len(trainer.label_manager.all_labels)
    data = torch.randn(batch_size, trainer.num_input_channels, *patch)
    target = torch.randint(0, labels, (batch_size, 1, *patch)).float()
    scales = trainer._get_deep_supervision_scales()
    if scales is None:
        return {"data": data, "target": target}
    sizes = [[int(round(p * s)) for p, s in zip(patch, scale)] for scale in scales]
    return {"data": data, "target": [F.interpolate(target, size=size, mode="nearest") for size in sizes]}


def _time_steps(trainer: Any, batch: dict, warmup: int, steps: int) -> float:
    import torch

    def sync() -> None:
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        trainer.train_step(batch)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(batch)
    sync()
    return (time.perf_counter() - start) / steps


def stock_patch(patch: list[int], strides: list[list[int]]) -> list[int]:
    """``patch`` padded up to a multiple of the U-Net's total stride per axis (what its skip connections need)."""
    divisors = [math.prod(stride[axis] for stride in strides) for axis in range(len(patch))]
    return [int(math.ceil(p / d) * d) for p, d in zip(patch, divisors)]


def _child_steps(dataset_id: int, configuration: str, trainer_name: str, device: str, warmup: int, steps: int) -> dict:
    """Seconds per ``train_step`` of ``trainer_name`` on ``configuration`` and of stock ``nnUNetTrainer`` on the
    parent 3d_fullres U-Net at the same patch (padded to its divisibility) and batch; random batches."""
    import copy

    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_fm import registry
    from nnunet_fm.plans import plans_path, read_plans

    path = plans_path(dataset_id)
    plans = {**read_plans(path), "continue_training": False}
    dataset_json = json.loads((path.parent / "dataset.json").read_text())
    torch_device = torch.device(device)
    family = next(f for f in registry.families() if trainer_name in f.trainers)
    trainer = family.trainer_class(trainer_name)(plans, configuration, 0, dataset_json, torch_device)
    trainer.initialize()
    patch = [int(v) for v in trainer.configuration_manager.patch_size]
    batch_size = int(trainer.configuration_manager.batch_size)
    family_s = _time_steps(trainer, _random_batch(trainer, patch, batch_size), warmup, steps)
    del trainer
    if device == "cuda":
        torch.cuda.empty_cache()

    parent = plans["configurations"]["3d_fullres"]
    padded = stock_patch(patch, parent["architecture"]["arch_kwargs"]["strides"])
    stock_plans = {**copy.deepcopy(plans), "continue_training": False}  # the family trainer popped it
    stock_plans["configurations"]["3d_gpu_check_stock"] = {
        "inherits_from": "3d_fullres",
        "patch_size": padded,
        "batch_size": batch_size,
    }
    stock = nnUNetTrainer(stock_plans, "3d_gpu_check_stock", 0, dataset_json, torch_device)
    stock.initialize()
    stock_s = _time_steps(stock, _random_batch(stock, padded, batch_size), warmup, steps)
    return {"family_s": family_s, "stock_s": stock_s, "stock_patch": padded, "patch": patch, "batch": batch_size}


def _child(argv: list[str]) -> dict:
    """One family in one process (one torch/nnU-Net import): ``nnUNetv2_train``, then ``nnUNetv2_predict`` (peak
    reset between), then the step timing. ``argv``: dataset id, configuration, trainer, device, warm-up and timed
    steps, test images folder, predictions folder, predictor processes."""
    import torch

    dataset_id, configuration, trainer, device, warmup, steps, images, out, processes = argv
    result = {"train": _child_train([dataset_id, configuration, "0", "-tr", trainer, "-device", device])}
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    predict_args = ["-i", images, "-o", out, "-d", dataset_id, "-c", configuration, "-tr", trainer, "-f", "0"]
    predict_args += ["-device", device, "-npp", processes, "-nps", processes]
    result["predict"] = _child_predict(predict_args)
    result["steps"] = _child_steps(int(dataset_id), configuration, trainer, device, int(warmup), int(steps))
    return result


def _result(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith(MARKER)]
    if not lines:
        raise RuntimeError(f"no result line in the child's output:\n{output[-2000:]}")
    return json.loads(lines[-1][len(MARKER) :])


# --- the check ------------------------------------------------------------------------------------------------


def family_settings(family: Any, mode: Mode) -> dict[str, Any]:
    """``plans add --set`` values of ``family``: a random-weight encoder and ``mode``'s iteration budget, plus the
    family's tiny test settings in a dry run."""
    tiny = tiny_settings(family.name)
    settings: dict[str, Any] = {}
    if mode.tiny:
        settings.update({**tiny.arch_kwargs, **tiny.plans_overrides})
    elif "encoder_weights" in tiny.plans_overrides:
        settings["encoder_weights"] = "none"
    settings.update(num_epochs=1, num_iterations_per_epoch=mode.iterations, num_val_iterations_per_epoch=1)
    return settings


def _prediction_ok(images: Path, predictions: Path) -> bool:
    """One prediction per test image, each of its image's size."""
    import SimpleITK as sitk

    cases = sorted(images.glob("*_0000.nii.gz"))
    if not cases:
        return False
    for case in cases:
        predicted = predictions / case.name.replace("_0000.nii.gz", ".nii.gz")
        if not predicted.is_file():
            return False
        if sitk.ReadImage(str(predicted)).GetSize() != sitk.ReadImage(str(case)).GetSize():
            return False
    return True


@contextlib.contextmanager
def _estimate_on() -> Iterator[None]:
    from nnunet_fm.memory_plan import ESTIMATE_SWITCH

    previous = os.environ.get(ESTIMATE_SWITCH)
    os.environ[ESTIMATE_SWITCH] = "on"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ESTIMATE_SWITCH, None)
        else:
            os.environ[ESTIMATE_SWITCH] = previous


def check_family(ws: Any, family: Any, mode: Mode, device: str, row: Row) -> None:
    """Plans add, stock train and predict, estimate vs peak, step times: fills one family's :class:`Row`."""
    from nnunet_fm.demo import add_plans
    from nnunet_fm.plans import fit_memory, plans_path, read_plans

    settings = [f"{key}={json.dumps(value)}" for key, value in family_settings(family, mode).items()]
    configuration = add_plans(ws, mode.dataset_id, family.template, settings)
    path = plans_path(mode.dataset_id)
    plans = read_plans(path)
    config = plans["configurations"][configuration]
    with _estimate_on():  # the check compares against the estimate, whatever NNUNET_FM_MEMORY_ESTIMATE says
        memory = fit_memory(plans, configuration, config, path.parent, None)
    if memory is not None:
        row.estimate_gb = memory.estimate.training / GIB
        row.notes.append(f"estimate policy: {memory.estimate.policy}")
    else:
        row.notes.append("no estimate: plans add estimates the plugin's own networks only")
    predictions = ws.root / "predictions" / family.name
    images = ws.dataset_folder(mode.dataset_id) / "imagesTs"
    n_proc_da = os.environ.get("nnUNet_n_proc_DA", "0" if device == "cpu" else "4")
    result = _result(
        ws.run(
            *(sys.executable, "-m", "nnunet_fm.tools.gpu_check", CHILD, str(mode.dataset_id), configuration),
            *(family.trainer, device, str(mode.warmup_steps), str(mode.timed_steps), str(images), str(predictions)),
            ws.processes,
            extra_env={"nnUNet_n_proc_DA": n_proc_da},
        )
    )
    trained, predicted, steps = result["train"], result["predict"], result["steps"]
    row.prediction_ok = _prediction_ok(images, predictions)
    if device == "cuda":
        row.measured_gb = trained["train_peak"] / GIB
        row.notes.append(f"prediction peak {predicted['peak'] / GIB:.2f} GB")
    row.notes.append(
        f"nnUNetv2_train {trained['wall_s']:.0f} s ({mode.iterations} iterations + validation), "
        f"nnUNetv2_predict {predicted['wall_s']:.0f} s"
    )
    row.patch, row.batch = steps["patch"], steps["batch"]
    row.family_step_s, row.stock_step_s, row.stock_patch = steps["family_s"], steps["stock_s"], steps["stock_patch"]


def run_check(workdir: Path, dry_run: bool, names: list[str] | None = None) -> tuple[list[Row], str]:
    """Run the check for ``names`` (default: every family); its rows and the device ("cuda" or "cpu")."""
    from nnunet_fm import registry
    from nnunet_fm.nnunet_commands import Workspace

    families = registry.families()
    known = [f.name for f in families]
    unknown = [name for name in names or [] if name not in known]
    if unknown:
        raise UserInputError(f"--families: unknown {', '.join(unknown)}; registered: {', '.join(known)}.")
    import torch

    device = "cpu" if dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserInputError("no CUDA device here; run `scripts/gpu_check.sh --dry-run` for the CPU check.")
    mode = DRY_RUN if dry_run else REAL
    ws = Workspace(workdir, log=Path(workdir) / "commands.log")
    # nnU-Net reads its folders when first imported: point this process at the workspace before that
    os.environ.update({k: v for k, v in ws.env().items() if k.startswith("nnUNet_")})
    from nnunet_fm.demo import prepare_dataset

    prepare_dataset(ws, mode.dataset_id, num_train=mode.num_train, num_test=mode.num_test, spec=mode.spec)
    rows = []
    for family in families:
        if names and family.name not in names:
            continue
        start = time.perf_counter()
        row = Row(family.name)
        try:
            check_family(ws, family, mode, device, row)
        except Exception as exc:  # one family's failure must not hide the others' results
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            row.error = lines[-1][-300:] if lines else type(exc).__name__
        row.notes.append(f"{time.perf_counter() - start:.0f} s in all")
        print(f"[gpu_check] {family.name}: {time.perf_counter() - start:.0f} s", flush=True)
        rows.append(row)
    return rows, device


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == CHILD:
        print(MARKER + json.dumps(_child(argv[1:])), flush=True)
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny settings and data (CI)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: gpu_check_run (gpu_check_dry_run)")
    parser.add_argument("--families", nargs="+", default=None, help="a subset of the registered families")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path("gpu_check_dry_run" if args.dry_run else "gpu_check_run")
    start = time.perf_counter()
    try:
        rows, device = run_check(workdir, args.dry_run, args.families)
    except UserInputError as exc:
        return report(exc)
    table = format_table(rows, device)
    heading = (
        f"GPU readiness check ({'dry run, CPU, tiny settings' if args.dry_run else 'CUDA, preset geometry'}; "
        f"{time.perf_counter() - start:.0f} s)"
    )
    text = f"{heading}\n\n{table}\n"
    print(text)
    (workdir / "gpu_check.md").write_text(text)
    return 1 if any(failures(row) for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
