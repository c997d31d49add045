"""``nnunet-fm experiment``: the few-shot grid (trainers x shots x seeds x folds) through stock commands.

Each run adds its own configuration (``<template config>_k<K>_s<seed>``) with ``nnunet-fm plans add``,
trains with ``nnUNetv2_train --npz --c`` (so an interrupted run continues), predicts ``imagesTs`` and
evaluates against ``labelsTs``. A finished run leaves ``runs/<run>.json`` and is skipped next time.
Results: ``results.csv`` / ``results.md`` (mean +- std per trainer and K of Dice per class and overall, of
clDice for the merged foreground and per class, and of the merged foreground's Betti-0 error; ``-`` where a run
record predates those) and ``dice_vs_k.png``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_fm.atomic_io import atomic_write_json, atomic_write_text
from nnunet_fm.demo import add_plans
from nnunet_fm.nnunet_commands import Workspace, train_predict_evaluate
from nnunet_fm.templates import load_template, template_for_trainer
from nnunet_fm.tools.report import BINARY_BETTI0, BINARY_CLDICE, PER_CLASS_CLDICE, markdown_table


@dataclass(frozen=True)
class Run:
    """One cell of the grid."""

    trainer: str
    shots: int
    seed: int
    fold: str

    @property
    def name(self) -> str:
        return f"{self.trainer}__k{self.shots}__s{self.seed}__fold{self.fold}"


def grid(trainers: list[str], shots: list[int], seeds: list[int], folds: list[str]) -> list[Run]:
    """Every combination, ordered by trainer, then K, seed and fold."""
    return [Run(t, k, s, f) for t in trainers for k in shots for s in seeds for f in folds]


def settings_for(trainer: str, settings: list[str]) -> list[str]:
    """Settings that apply to ``trainer``: unprefixed ones, and ``TRAINER:key=value`` for this trainer."""
    chosen = []
    for setting in settings:
        prefix, sep, rest = setting.partition(":")
        if not sep or "=" in prefix:
            chosen.append(setting)
        elif prefix == trainer:
            chosen.append(rest)
    return chosen


def run_one(ws: Workspace, dataset_id: int, run: Run, settings: list[str], device: str) -> dict:
    """Plans add + train + predict + evaluate for one run; returns its record."""
    template, plugin_trainer = template_for_trainer(run.trainer)
    name = f"{load_template(template).configuration}_k{run.shots}_s{run.seed}"
    options = [f"few_shot_k={run.shots}", f"few_shot_seed={run.seed}", *settings_for(run.trainer, settings)]
    configuration = add_plans(ws, dataset_id, template, options, name=name)
    scores = train_predict_evaluate(
        ws, dataset_id, configuration, plugin_trainer, run.fold, device, predict_args=("--disable_tta",), resume=True
    )
    return {
        "trainer": run.trainer,
        "plugin_trainer": plugin_trainer,
        "configuration": configuration,
        "shots": run.shots,
        "seed": run.seed,
        "fold": run.fold,
        **scores,
    }


def run_grid(
    ws: Workspace, dataset_id: int, runs: list[Run], settings: list[str], device: str, progress: bool = True
) -> list[dict]:
    """Run every unfinished run (finished ones are read back), with a progress bar."""
    from tqdm import tqdm

    records_dir = ws.root / "runs"
    records_dir.mkdir(parents=True, exist_ok=True)
    records = []
    bar = tqdm(runs, desc="few-shot grid", disable=not progress)
    for run in bar:
        record_file = records_dir / f"{run.name}.json"
        if record_file.is_file():
            bar.set_postfix_str(f"{run.name}: done earlier, skipped")
            records.append(json.loads(record_file.read_text()))
            continue
        bar.set_postfix_str(run.name)
        record = run_one(ws, dataset_id, run, settings, device)
        atomic_write_json(record_file, record)
        records.append(record)
    return records


def _add_mean_std(row: dict, name: str, values: list[float | None]) -> None:
    """``row[name_mean]`` / ``row[name_std]``, unless a record lacks the value (run before it was measured)."""
    if values and all(v is not None for v in values):
        row[f"{name}_mean"], row[f"{name}_std"] = float(np.mean(values)), float(np.std(values))


def summarise(records: list[dict]) -> list[dict]:
    """Mean and std per (trainer, K), over seeds and folds, of Dice (overall, per class), clDice and Betti-0 error.

    clDice: ``cldice_*`` (merged foreground) and ``cldice_class_<c>_*``; ``betti0_error_*`` (merged foreground).
    """
    rows = []
    keys = sorted({(r["trainer"], r["shots"]) for r in records}, key=lambda k: (k[0], k[1]))
    for trainer, shots in keys:
        group = [r for r in records if r["trainer"] == trainer and r["shots"] == shots]
        row = {"trainer": trainer, "shots": shots, "runs": len(group)}
        overall = np.array([r["mean_dice"] for r in group])
        row["dice_mean"], row["dice_std"] = float(overall.mean()), float(overall.std())
        for label in sorted({c for r in group for c in r["per_class_dice"]}, key=int):
            values = np.array([r["per_class_dice"][label] for r in group])
            row[f"class_{label}_mean"], row[f"class_{label}_std"] = float(values.mean()), float(values.std())
            _add_mean_std(row, f"cldice_class_{label}", [r.get(PER_CLASS_CLDICE, {}).get(label) for r in group])
        _add_mean_std(row, "cldice", [r.get(BINARY_CLDICE) for r in group])
        _add_mean_std(row, "betti0_error", [r.get(BINARY_BETTI0) for r in group])
        rows.append(row)
    return rows


def _cell(row: dict, name: str, digits: int = 4) -> str:
    """'mean ± std' of a summarise() entry, '-' when the row has none."""
    if f"{name}_mean" not in row:
        return "-"
    return f"{row[f'{name}_mean']:.{digits}f} ± {row[f'{name}_std']:.{digits}f}"


def to_markdown(rows: list[dict]) -> str:
    """Markdown table: one row per trainer and K, 'mean ± std' cells of Dice, clDice and the Betti-0 error."""
    labels = sorted({k[6:-5] for r in rows for k in r if k.startswith("class_") and k.endswith("_mean")}, key=int)
    header = [
        "trainer",
        "K",
        "runs",
        "Dice (mean ± std)",
        *[f"class {c}" for c in labels],
        "binary clDice",
        *[f"class {c} clDice" for c in labels],
        "binary Betti-0 error",
    ]
    cells = [
        [r["trainer"], str(r["shots"]), str(r["runs"]), _cell(r, "dice")]
        + [_cell(r, f"class_{c}") for c in labels]
        + [_cell(r, "cldice")]
        + [_cell(r, f"cldice_class_{c}") for c in labels]
        + [_cell(r, "betti0_error", 2)]
        for r in rows
    ]
    return markdown_table(header, cells) + "\n"


def write_reports(rows: list[dict], out: Path) -> dict[str, Path]:
    """results.csv, results.md and dice_vs_k.png in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    csv_file, md_file, png_file = out / "results.csv", out / "results.md", out / "dice_vs_k.png"
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(csv_file, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(md_file, to_markdown(rows))
    figure, ax = plt.subplots(figsize=(6, 4))
    for trainer in dict.fromkeys(r["trainer"] for r in rows):
        mine = [r for r in rows if r["trainer"] == trainer]
        ax.errorbar(
            [r["shots"] for r in mine],
            [r["dice_mean"] for r in mine],
            [r["dice_std"] for r in mine],
            marker="o",
            capsize=3,
            label=trainer,
        )
    ax.set_xlabel("labelled training volumes (K)")
    ax.set_ylabel("mean foreground Dice (test set)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    figure.savefig(png_file, dpi=90, bbox_inches="tight")
    plt.close(figure)
    return {"csv": csv_file, "markdown": md_file, "plot": png_file}
