"""Semi-supervised re-training on the demo data: labelled-only vs self-training vs Mean Teacher vs the SFR recipe.

    python -m nnunet_fm.tools.ssl_report --workdir ssl_run [--shots 1,3] [--seeds 0,1,2] [--unlabelled 6]
        [--epochs 10] [--iterations 10] [--teacher-epochs 6] [--device cpu]
    python -m nnunet_fm.tools.ssl_report --workdir ssl_run --ablate 925 --name 3d_abl --set ssl=mean_teacher ...

For every K and seed (the seed picks the K labelled cases, ``few_shot_seed``), on one synthetic vessel dataset:

1. a K-shot DINOv3-FFA teacher (fold 0; the demo's tiny random-weight encoder);
2. the student (default ``nnUNetTrainerUNetFewShot``) at the same budget in four ways:
   * **labelled only**: the K cases (fold 0);
   * **self-training**: K labelled + the teacher's confident pseudo-labels (``nnunet-fm pseudolabel``, fold all);
   * **Mean Teacher**: K labelled + ``--unlabelled`` unlabelled cases (``nnunet-fm add-unlabelled``, all-ignore
     labels) with ``ssl=mean_teacher`` (fold all);
   * **Mean Teacher + FFA pseudo-labels** (SFR): the pseudo-labelled dataset with the cases that were not kept
     entering as unlabelled (``pseudolabel --add-unlabelled``) and ``ssl=mean_teacher`` (fold all);
3. every model evaluated on the demo test set; the Mean Teacher models twice, with the teacher (the report pins
   ``predict_with=teacher``) and with the student (``nnunet-fm predict-with student``; the hook's default). Writes
   ``ssl_report.json`` / ``ssl_report.md`` (mean ± std over seeds per K and method of Dice, clDice and the
   Betti-0 error; ``-`` for records from before those were measured) and keeps each finished step in
   ``runs/`` so an interrupted report continues. ``--ablate DATASET --name NAME --set KEY=VALUE ...`` trains one
student configuration on a dataset of the work folder (fold all, the report's schedule, ``few_shot_k=null`` plus the
settings) and writes its test Dice to ``ablations/NAME.json`` (with ``ssl=mean_teacher``: the teacher's and the
student's; the batch-composition runs of BENCHMARKS.md);
``--ablations-table`` prints them, runs named ``NAME_r<N>`` grouped with ``NAME`` as repeats (mean ± std).

Mean Teacher runs with the hook's defaults (the SSL4MIS recipe, ``nnunet_fm/hooks/mean_teacher.py``); every
student gets the same number of optimiser steps.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path

from nnunet_fm.atomic_io import atomic_write_json, atomic_write_text
from nnunet_fm.demo import FLAGSHIP, prepare_dataset
from nnunet_fm.file_names import FEWSHOT_RECORD_NAME
from nnunet_fm.nnunet_commands import Workspace, plan_like_source, predict_evaluate
from nnunet_fm.tools.report import markdown_table, mean_std_cell, vessel_header, vessel_mean_std_cells
from nnunet_fm.tools.sfr_report import copy_test_set, pseudolabel_into, train_config
from nnunet_fm.unlabelled import add_unlabelled

SOURCE_ID = 905
TRAINED = ("labelled only", "self-training", "Mean Teacher", "Mean Teacher + FFA pseudo-labels")
STUDENT = " (student)"
METHODS = (*TRAINED[:3], TRAINED[2] + STUDENT, TRAINED[3], TRAINED[3] + STUDENT)
#: Mean Teacher rows: the checkpoint holds the teacher (the row), the student is scored by switching to it
MEAN_TEACHER = ("ssl=mean_teacher", "predict_with=teacher")
#: configuration names differ per method, so prediction folders (named trainer__configuration__fold) never clash
CONFIGURATION_PREFIX = dict(zip(TRAINED, ("labelled", "self-training", "mt", "sfr")))
CLASSES = {"1": "artery", "2": "vein"}
#: the score columns of both tables: Dice (mean, per class), then clDice (binary, per class), binary Betti-0 error
SCORE_HEADER = ["mean Dice", *CLASSES.values(), *vessel_header(list(CLASSES.values()))]


def _schedule(epochs: int, iterations: int) -> list[str]:
    return [f"num_epochs={epochs}", f"num_iterations_per_epoch={iterations}", "num_val_iterations_per_epoch=1"]


def student_scores(ws: Workspace, dataset_id: int, configuration: str, trainer: str, device: str) -> dict:
    """Dice of a Mean Teacher model's student (fold all): switch the checkpoint, predict, switch back."""
    model = str(ws.model_folder(dataset_id, trainer, configuration))
    ws.run("nnunet-fm", "predict-with", "student", "-m", model, "-f", "all")
    try:
        return predict_evaluate(ws, dataset_id, configuration, trainer, "all", device, ("--disable_tta",), "_student")
    finally:
        ws.run("nnunet-fm", "predict-with", "teacher", "-m", model, "-f", "all")


def _labelled_only_dataset(ws: Workspace, source: Path, keep: set[str], out_id: int, name: str) -> Path:
    """Copy of ``source`` with only the ``keep`` training cases (and its test set)."""
    target = ws.raw / f"Dataset{out_id:03d}_{name}"
    for root in (ws.raw, ws.preprocessed):
        for old in root.glob(f"Dataset{out_id:03d}_*"):
            shutil.rmtree(old)
    meta = json.loads((source / "dataset.json").read_text())
    ending = meta["file_ending"]
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("imagesTr", "labelsTr"))
    for sub in ("imagesTr", "labelsTr"):
        (target / sub).mkdir()
    for case in sorted(keep):
        shutil.copy2(source / "labelsTr" / f"{case}{ending}", target / "labelsTr")
        for image in (source / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9]{ending}"):
            shutil.copy2(image, target / "imagesTr")
    atomic_write_json(target / "dataset.json", {**meta, "numTraining": len(keep)})
    return target


def _cached(file: Path, compute: Callable[[], dict]) -> dict:
    """The JSON in ``file``, or ``compute()`` written there: a re-run continues after the last finished step."""
    if file.is_file():
        return json.loads(file.read_text())
    result = compute()
    atomic_write_json(file, result)
    return result


def _derived_datasets(ws: Workspace, source: Path, model: Path, tag: str, base: int, args) -> dict[str, int]:
    """The self-training, Mean Teacher and SFR datasets of one (K, seed), planned like the source."""
    labelled = set(json.loads((model / "fold_0" / FEWSHOT_RECORD_NAME).read_text())["cases"])
    splits = json.loads((ws.preprocessed / source.name / "splits_final.json").read_text())
    candidates = sorted(set(splits[0]["train"]) - labelled)[: args.unlabelled]
    pool = ws.root / f"pool_{tag}"
    shutil.rmtree(pool, ignore_errors=True)
    pool.mkdir()
    for case in candidates:
        shutil.copy(source / "imagesTr" / f"{case}_0000.nii.gz", pool)
    ids = {TRAINED[1]: base, TRAINED[2]: base + 1, TRAINED[3]: base + 2}
    selection = (args.keep_fraction, args.voxel_threshold, args.device)
    pseudo = pseudolabel_into(ws, model, pool, *selection, ids[TRAINED[1]], f"SSLPseudo{tag}")
    mixed = pseudolabel_into(ws, model, pool, *selection, ids[TRAINED[3]], f"SSLPseudoUl{tag}", ("--add-unlabelled",))
    plain = _labelled_only_dataset(ws, source, labelled, ids[TRAINED[2]], f"SSLUnlabelled{tag}")
    add_unlabelled(plain, pool)
    for dataset, dataset_id in zip((pseudo, plain, mixed), ids.values()):
        copy_test_set(source, dataset)
        plan_like_source(ws, SOURCE_ID, dataset_id)
    return ids


def _step_file(cache: Path, method: str) -> Path:
    """Where one method's scores of one (K, seed) are kept."""
    student = method.endswith(STUDENT)
    return cache / (method.removesuffix(STUDENT).replace(" ", "_") + ("_student" if student else "") + ".json")


def finished_records(ws: Workspace, shots: int, seed: int) -> list[dict]:
    """The records of one (K, seed) whose runs have finished (``--table-only``)."""
    cache = ws.root / "runs" / f"k{shots}_s{seed}"
    files = {method: _step_file(cache, method) for method in METHODS}
    return [
        {"method": method, "shots": shots, "seed": seed, **json.loads(file.read_text())}
        for method, file in files.items()
        if file.is_file()
    ]


def run_seed(ws: Workspace, source: Path, shots: int, seed: int, args: argparse.Namespace) -> list[dict]:
    """Teacher + the four students for one (K, seed); one record per row of METHODS.

    Every finished step is kept in ``runs/k<K>_s<seed>/`` and skipped when the report is run again.
    """
    tag = f"k{shots}_s{seed}"
    cache = ws.root / "runs" / tag
    cache.mkdir(parents=True, exist_ok=True)
    pick = [f"few_shot_k={shots}", f"few_shot_seed={seed}"]
    teacher = FLAGSHIP["trainer"]
    teacher_settings = [*_schedule(args.teacher_epochs, args.iterations), *pick]
    _cached(
        cache / "teacher.json",
        lambda: train_config(ws, SOURCE_ID, teacher, teacher_settings, f"3d_t_{tag}", args.device),
    )
    model = ws.model_folder(SOURCE_ID, teacher, f"3d_t_{tag}")
    base = 910 + 10 * (shots % 10) + 3 * seed  # three derived datasets per (K, seed)
    ids = _cached(cache / "datasets.json", lambda: _derived_datasets(ws, source, model, tag, base, args))

    student, schedule = args.student, _schedule(args.epochs, args.iterations)
    everything = [*schedule, "few_shot_k=null"]
    plans = {
        TRAINED[0]: (SOURCE_ID, [*schedule, *pick], 0),
        TRAINED[1]: (ids[TRAINED[1]], everything, "all"),
        TRAINED[2]: (ids[TRAINED[2]], [*everything, *MEAN_TEACHER], "all"),
        TRAINED[3]: (ids[TRAINED[3]], [*everything, *MEAN_TEACHER], "all"),
    }
    records = []
    for method in TRAINED:
        dataset_id, settings, fold = plans[method]
        name = f"3d_{CONFIGURATION_PREFIX[method]}_{tag}"
        scores = _cached(
            _step_file(cache, method),
            partial(train_config, ws, dataset_id, student, settings, name, args.device, fold=fold),
        )
        records.append({"method": method, "shots": shots, "seed": seed, **scores})
        if MEAN_TEACHER[0] in settings:
            scores = _cached(
                _step_file(cache, method + STUDENT),
                partial(student_scores, ws, dataset_id, name, student, args.device),
            )
            records.append({"method": method + STUDENT, "shots": shots, "seed": seed, **scores})
    return records


def summarise(records: list[dict]) -> list[list[str]]:
    """Rows per K and method: mean ± std over seeds of SCORE_HEADER's scores, then each seed's mean Dice."""
    rows = []
    for shots in sorted({r["shots"] for r in records}):
        for method in METHODS:
            group = sorted(
                (r for r in records if r["shots"] == shots and r["method"] == method), key=lambda r: r["seed"]
            )
            if not group:
                continue
            cells = [method, str(shots), str(len(group)), *_score_cells(group)]
            cells.append(", ".join(f"s{r['seed']}: {r['mean_dice']:.4f}" for r in group))
            rows.append(cells)
    return rows


def _score_cells(records: list[dict]) -> list[str]:
    """``mean ± std`` over ``records`` of each SCORE_HEADER column (``-`` where a record predates the metric)."""
    cells = [
        mean_std_cell(values)
        for values in (
            [r["mean_dice"] for r in records],
            *([r["per_class_dice"].get(c, 0.0) for r in records] for c in CLASSES),
        )
    ]
    return cells + vessel_mean_std_cells(records, list(CLASSES))


def ablation(ws: Workspace, dataset_id: int, name: str, settings: list[str], args: argparse.Namespace) -> dict:
    """One student configuration with extra ``settings`` on a dataset of the work folder; scores in ablations/."""
    if MEAN_TEACHER[0] in settings and not any(s.startswith("predict_with=") for s in settings):
        settings = [*settings, MEAN_TEACHER[1]]
    settings = [*_schedule(args.epochs, args.iterations), "few_shot_k=null", *settings]
    scores = train_config(ws, dataset_id, args.student, settings, name, args.device, fold="all")
    record = {"dataset": dataset_id, "settings": settings, **scores}
    if MEAN_TEACHER[0] in settings:  # the checkpoint predicts with the teacher; score the student too
        record["student"] = student_scores(ws, dataset_id, name, args.student, args.device)
    atomic_write_json(ws.root / "ablations" / f"{name}.json", record)
    return record


def ablation_rows(ws: Workspace) -> list[list[str]]:
    """One row per ablation group (names equal up to a ``_r<N>`` repeat suffix): runs, mean ± std, each run."""
    groups: dict[str, list[tuple[str, dict]]] = {}
    for path in sorted((ws.root / "ablations").glob("*.json")):
        record = json.loads(path.read_text())
        if "mean_dice" in record:
            stem = re.sub(r"_r\d+$", "", path.stem)
            groups.setdefault(stem, []).append((path.stem, record))
            if "student" in record:
                groups.setdefault(stem + STUDENT, []).append((path.stem, {**record, **record["student"]}))
    rows = []
    for stem, runs in groups.items():
        extra = runs[0][1]["settings"][len(_schedule(0, 0)) + 1 :]  # after the schedule and few_shot_k=null
        cells = [stem, str(runs[0][1]["dataset"]), " ".join(extra) or "(none)", str(len(runs))]
        cells += _score_cells([r for _, r in runs])
        cells.append(", ".join(f"{r['mean_dice']:.4f}" for _, r in runs))
        rows.append(cells)
    return rows


def to_markdown(records: list[dict]) -> str:
    header = ["method", "K", "seeds", *SCORE_HEADER, "per seed (mean Dice)"]
    return markdown_table(header, summarise(records))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="ssl_run")
    parser.add_argument("--shots", default="1,3")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--unlabelled", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--teacher-epochs", type=int, default=6)
    parser.add_argument("--student", default="nnUNetTrainerUNetFewShot")
    parser.add_argument("--keep-fraction", type=float, default=0.75)
    parser.add_argument("--voxel-threshold", type=float, default=0.7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--table-only", action="store_true", help="write the table from finished runs; train nothing")
    parser.add_argument("--ablate", type=int, metavar="DATASET", help="train one configuration on this dataset only")
    parser.add_argument("--name", default="3d_ablation", help="--ablate: the configuration name")
    parser.add_argument(
        "--ablations-table", action="store_true", help="print the ablations/ records, repeats (_r<N>) grouped"
    )
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="--ablate: extra plans settings")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    ws = Workspace(workdir, log=workdir / "commands.log")
    if args.ablations_table:
        header = ["ablation", "dataset", "settings", "runs", *SCORE_HEADER, "per run (mean Dice)"]
        print(markdown_table(header, ablation_rows(ws)))
        return
    if args.ablate is not None:
        print(json.dumps(ablation(ws, args.ablate, args.name, args.set, args), indent=2))
        return
    shots = [int(k) for k in args.shots.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.table_only:
        source = prepare_dataset(ws, SOURCE_ID, num_train=max(shots) + args.unlabelled + 2, num_test=4, seed=11)
    records: list[dict] = []
    for k in shots:
        for seed in seeds:
            records += finished_records(ws, k, seed) if args.table_only else run_seed(ws, source, k, seed, args)
            table = to_markdown(records)
            if not args.table_only:  # the arguments of the runs, not of a re-rendering
                atomic_write_json(workdir / "ssl_report.json", {"arguments": vars(args), "records": records})
            atomic_write_text(workdir / "ssl_report.md", table + "\n")
            print(table, flush=True)


if __name__ == "__main__":
    main()
