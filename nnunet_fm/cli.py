"""``nnunet-fm``: the plugin's commands next to nnU-Net's own (details: ``nnunet-fm COMMAND --help``).

Set-up: env, doctor. Plans: plans add / list / show. Data: demo-data, check-dataset, add-unlabelled.
Semi-supervised: pseudolabel, predict-with. Results: evaluate, find-best, experiment. End to end: demo.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from nnunet_fm.environment import default_device
from nnunet_fm.errors import UserInputError, report

#: every command with a --device takes the same rule
DEVICE_HELP = "cpu or cuda (default: cuda when available, else cpu)"


def _cmd_env(args: argparse.Namespace) -> int:
    from nnunet_fm.environment import env_lines

    print("\n".join(env_lines()))
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from nnunet_fm.doctor import format_report, run_checks

    checks = run_checks()
    print(format_report(checks))
    essential = [c for c in checks if c.name.startswith(("nnunetv2", "trainer"))]
    return 0 if all(c.ok for c in essential) else 1


def _cmd_plans_add(args: argparse.Namespace) -> int:
    from nnunet_fm.plans import add_configuration, parse_assignments

    result = add_configuration(
        args.dataset,
        args.template,
        args.name,
        args.plans,
        parse_assignments(args.set or []),
        force=args.force,
        gpu_memory=args.gpu_memory,
    )
    print(f"Added configuration '{result.configuration}' to {result.plans_file} (backup: {result.backup.name})")
    print(f"  patch_size {result.patch_size}, batch_size {result.batch_size}")
    for line in result.memory:
        print(f"  {line}")
    if result.preprocess_command:
        print(f"  this configuration has its own preprocessed data; run first: {result.preprocess_command}")
    for warning in result.warnings:
        print(f"  WARNING: {warning}")
    print(
        f"  train: nnUNetv2_train {args.dataset} {result.configuration} FOLD -tr {result.trainer} -p {args.plans} --npz"
    )
    return 0


def _cmd_plans_list(args: argparse.Namespace) -> int:
    from nnunet_fm.templates import describe_templates

    print(describe_templates())
    return 0


def _cmd_plans_show(args: argparse.Namespace) -> int:
    from nnunet_fm.plans import show_configuration

    print(show_configuration(args.dataset, args.configuration, args.plans, args.trainer))
    return 0


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from nnunet_fm.demo_data import DemoSpec, write_demo_dataset

    folder = write_demo_dataset(
        args.out,
        args.id,
        args.name,
        args.train,
        args.test,
        DemoSpec(shape=tuple(args.shape), spacing=tuple(args.spacing)),
        args.seed,
        args.unlabelled,
    )
    print(f"Wrote {folder}")
    return 0


def _cmd_check_dataset(args: argparse.Namespace) -> int:
    from nnunet_fm.dataset_check import check_raw_dataset
    from nnunet_fm.hooks.splits import few_case_note

    cases = check_raw_dataset(args.folder)
    print(f"{args.folder}: {len(cases)} training case(s), no problems found")
    note = few_case_note(len(cases))
    if note:
        print(f"  note: {note}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from nnunet_fm.demo import run_demo

    scores = run_demo(
        args.workdir, trainer=args.trainer, epochs=args.epochs, iterations=args.iterations, device=args.device
    )
    print(json.dumps(scores, indent=2))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import os

    from nnunet_fm.evaluate_command import evaluate_folder

    output = args.o or os.path.join(args.pred, "summary.json")
    summary = evaluate_folder(
        args.ref, args.pred, args.djfile, args.pfile, output, args.np, args.chill, conventions=args.conventions
    )
    metrics = ("Dice", "clDice", "Betti0_error", "Betti1_error", "HD95")
    rows = [*summary["mean"].items(), ("binary", summary["binary"])]
    if "class_average" in summary:
        rows.append(("class_average", summary["class_average"]))
    for key, means in rows:
        print(f"{key}: " + ", ".join(f"{m} {means[m]:.4f}" for m in metrics if m in means))
    print(f"Wrote {output} ({len(summary['metric_per_case'])} case(s); HD95 in mm)")
    return 0


def _model_folder(args: argparse.Namespace) -> str:
    if args.model:
        return args.model
    if not (args.dataset and args.configuration):
        raise UserInputError("Give -m MODEL_FOLDER, or -d DATASET -c CONFIGURATION [-tr TRAINER -p PLANS].")
    import os

    from nnunetv2.utilities.file_path_utilities import get_output_folder

    from nnunet_fm.plans import dataset_name

    if not os.environ.get("nnUNet_results"):
        raise UserInputError("nnUNet_results is not set (see `nnunet-fm env`).")
    return get_output_folder(dataset_name(args.dataset), args.trainer, args.plans, args.configuration)


def _cmd_predict_with(args: argparse.Namespace) -> int:
    from nnunet_fm.hooks.mean_teacher_weights import switch_model_weights

    changed = switch_model_weights(_model_folder(args), args.fold, args.use)
    for file in changed:
        print(f"{file}: network_weights are now the {args.use}'s")
    if not changed:
        print(f"Every checkpoint already holds the {args.use}'s weights; nothing changed.")
    return 0


def _cmd_pseudolabel(args: argparse.Namespace) -> int:
    from nnunet_fm.pseudolabel import next_steps, pseudolabel

    model_folder = _model_folder(args)
    folder = pseudolabel(
        model_folder,
        args.input,
        args.out_id,
        args.out_name,
        args.fold,
        args.case_threshold,
        args.keep_fraction,
        args.voxel_threshold,
        args.device or default_device(),
        not args.disable_tta,
        args.add_unlabelled,
    )
    manifest = json.loads((folder / "pseudolabel_manifest.json").read_text())
    kept = [c for c in manifest["pseudo_cases"] if c["kept"]]
    print(f"Wrote {folder}: {len(manifest['labelled_cases'])} labelled + {len(kept)} pseudo-labelled case(s)")
    for case in manifest["pseudo_cases"]:
        print(f"  {case['case']}: confidence {case['confidence']:.3f} {'kept' if case['kept'] else 'dropped'}")
    print(next_steps(model_folder, folder))
    return 0


def _cmd_add_unlabelled(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from nnunet_fm.plans import dataset_name
    from nnunet_fm.unlabelled import add_unlabelled

    if not os.environ.get("nnUNet_raw"):
        raise UserInputError("nnUNet_raw is not set (see `nnunet-fm env`).")
    folder = Path(os.environ["nnUNet_raw"]) / dataset_name(args.dataset)
    cases = add_unlabelled(folder, args.input)
    print(f"Added {len(cases)} unlabelled case(s) to {folder} (all-ignore labels; see fm_cases.json)")
    print(f"  then: nnUNetv2_plan_and_preprocess -d {args.dataset} -c 3d_fullres --verify_dataset_integrity")
    print(f"  and:  nnunet-fm plans add -d {args.dataset} --template TEMPLATE --set ssl=mean_teacher")
    return 0


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _cmd_experiment(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nnunet_fm.experiment import grid, run_grid, summarise, to_markdown, write_reports
    from nnunet_fm.nnunet_commands import Workspace

    out = Path(args.out)
    ws = Workspace.from_environment(out, log=out / "commands.log")
    runs = grid(args.trainers.split(","), _int_list(args.shots), _int_list(args.seeds), args.folds.split(","))
    settings = list(args.set or [])
    settings += [f"num_epochs={args.epochs}"] if args.epochs else []
    settings += [f"num_iterations_per_epoch={args.iterations}"] if args.iterations else []
    rows = summarise(run_grid(ws, int(args.dataset), runs, settings, args.device or default_device()))
    files = write_reports(rows, out)
    print(to_markdown(rows))
    print("Reports: " + ", ".join(str(p) for p in files.values()))
    return 0


def _cmd_find_best(args: argparse.Namespace) -> int:
    from nnunetv2.evaluation.find_best_configuration import find_best_configuration

    from nnunet_fm.environment import EXT_TRAINER_VARIABLE, plugin_env
    from nnunet_fm.plans import dataset_name

    models = []
    for item in args.models:
        trainer, sep, configuration = item.partition(":")
        if not sep:
            raise UserInputError(f"-m expects TRAINER:CONFIGURATION[:PLANS], got '{item}'.")
        configuration, _, plans = configuration.partition(":")
        models.append({"plans": plans or "nnUNetPlans", "configuration": configuration, "trainer": trainer})
    import os

    os.environ[EXT_TRAINER_VARIABLE] = plugin_env()[EXT_TRAINER_VARIABLE]
    find_best_configuration(
        dataset_name(args.dataset),
        tuple(models),
        allow_ensembling=not args.disable_ensembling,
        num_processes=args.np,
        folds=tuple(args.folds),
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet-fm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("env", help="print the export lines nnU-Net needs").set_defaults(func=_cmd_env)
    sub.add_parser("doctor", help="check the installation").set_defaults(func=_cmd_doctor)

    plans = sub.add_parser("plans", help="add plugin configurations to nnU-Net plans").add_subparsers(
        dest="plans_command", required=True
    )
    add = plans.add_parser("add", help="add a template configuration to a plans file")
    add.add_argument("-d", "--dataset", required=True, help="dataset id or name")
    add.add_argument("--template", required=True, help="template name (see `nnunet-fm plans list`)")
    add.add_argument("--name", help="configuration name (default: the template's)")
    add.add_argument("--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    add.add_argument(
        "--set",
        nargs="*",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="set options the template's trainer or network reads (JSON values); repeatable",
    )
    add.add_argument("--force", action="store_true", help="replace a configuration nnunet-fm did not write")
    add.add_argument(
        "--gpu-memory",
        type=float,
        metavar="GB",
        help="fit the training memory estimate to this GPU: whole slices kept, the largest crop depth (then batch) "
        "that fits; without it the recipe is kept and an estimate above 24 GB is warned about",
    )
    add.set_defaults(func=_cmd_plans_add)
    plans.add_parser("list", help="list templates, their keys and defaults").set_defaults(func=_cmd_plans_list)
    show = plans.add_parser("show", help="effective value and source of every option of a configuration")
    show.add_argument("-d", "--dataset", required=True, help="dataset id or name")
    show.add_argument("-c", "--configuration", required=True)
    show.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    show.add_argument("-tr", "--trainer", help="trainer (default: the one plans add recorded)")
    show.set_defaults(func=_cmd_plans_show)

    demo_data = sub.add_parser("demo-data", help="write a synthetic few-shot vessel dataset")
    demo_data.add_argument("--out", required=True, help="nnUNet_raw folder to write into")
    demo_data.add_argument("--id", type=int, required=True)
    demo_data.add_argument("--name", default="FMDemoVessels")
    demo_data.add_argument("--train", type=int, default=8)
    demo_data.add_argument("--test", type=int, default=4)
    demo_data.add_argument(
        "--unlabelled",
        type=int,
        default=0,
        help="extra training cases whose labels are hidden (all-ignore labels; true ones in labelsHidden/)",
    )
    demo_data.add_argument("--shape", type=int, nargs=3, default=[32, 64, 64], metavar=("D", "H", "W"))
    demo_data.add_argument("--spacing", type=float, nargs=3, default=[1.5, 0.7, 0.7], metavar=("SZ", "SY", "SX"))
    demo_data.add_argument("--seed", type=int, default=0)
    demo_data.set_defaults(func=_cmd_demo_data)

    check = sub.add_parser("check-dataset", help="check a raw dataset folder, naming every bad case")
    check.add_argument("folder")
    check.set_defaults(func=_cmd_check_dataset)

    pseudo = sub.add_parser("pseudolabel", help="confident pseudo-labels -> a new raw dataset (SFR-style)")
    pseudo.add_argument("-m", "--model", help="trained model folder (TRAINER__PLANS__CONFIGURATION)")
    pseudo.add_argument("-d", "--dataset")
    pseudo.add_argument("-c", "--configuration")
    pseudo.add_argument("-tr", "--trainer", default="nnUNetTrainerDINOv3FFA")
    pseudo.add_argument("-p", "--plans", default="nnUNetPlans")
    pseudo.add_argument("-f", "--fold", default="0")
    pseudo.add_argument("-i", "--input", required=True, help="folder of unlabelled images (CASE_XXXX.nii.gz)")
    pseudo.add_argument("--out-id", type=int, required=True)
    pseudo.add_argument("--out-name", default="PseudoLabelled")
    choice = pseudo.add_mutually_exclusive_group()
    choice.add_argument("--case-threshold", type=float, help="keep cases with confidence >= T")
    choice.add_argument("--keep-fraction", type=float, help="keep the most confident fraction P of cases")
    pseudo.add_argument("--voxel-threshold", type=float, default=0.0, help="max-prob below V -> ignore label")
    pseudo.add_argument("--device", default=None, help=DEVICE_HELP)
    pseudo.add_argument("--disable_tta", action="store_true")
    pseudo.add_argument(
        "--add-unlabelled",
        action="store_true",
        help="add the cases that are not kept as unlabelled cases (all-ignore labels) for ssl=mean_teacher",
    )
    pseudo.set_defaults(func=_cmd_pseudolabel)

    use = sub.add_parser("predict-with", help="Mean Teacher model: make nnUNetv2_predict use the teacher or student")
    use.add_argument("use", choices=("teacher", "student"))
    use.add_argument("-m", "--model", help="trained model folder (TRAINER__PLANS__CONFIGURATION)")
    use.add_argument("-d", "--dataset")
    use.add_argument("-c", "--configuration")
    use.add_argument("-tr", "--trainer", default="nnUNetTrainerUNetFewShot")
    use.add_argument("-p", "--plans", default="nnUNetPlans")
    use.add_argument("-f", "--fold", nargs="+", default=["0"])
    use.set_defaults(func=_cmd_predict_with)

    unlabelled = sub.add_parser("add-unlabelled", help="add unlabelled images (all-ignore labels) to a raw dataset")
    unlabelled.add_argument("-d", "--dataset", required=True, help="dataset id or name")
    unlabelled.add_argument("-i", "--input", required=True, help="folder of images named CASE_XXXX<file ending>")
    unlabelled.set_defaults(func=_cmd_add_unlabelled)

    experiment = sub.add_parser("experiment", help="few-shot grid through stock commands, with result tables")
    experiment.add_argument("-d", "--dataset", required=True, help="dataset id (with imagesTs/labelsTs)")
    experiment.add_argument(
        "--trainers", default="nnUNetTrainer,nnUNetTrainerDINOv3FFA,nnUNetTrainerLightMedSeg,nnUNetTrainerDINOv3Cube"
    )
    experiment.add_argument("--shots", default="1,3,5")
    experiment.add_argument("--seeds", default="0,1,2")
    experiment.add_argument("--folds", default="0")
    experiment.add_argument("--epochs", type=int)
    experiment.add_argument("--iterations", type=int)
    experiment.add_argument("--device", default=None, help=DEVICE_HELP)
    experiment.add_argument("--out", default="fewshot_experiment", help="folder for predictions and reports")
    experiment.add_argument(
        "--set",
        nargs="*",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="extra plans keys for every run (TRAINER:KEY=VALUE for one trainer); repeatable",
    )
    experiment.set_defaults(func=_cmd_experiment)

    best = sub.add_parser("find-best", help="nnU-Net's find_best_configuration over explicit trainer:config pairs")
    best.add_argument("-d", "--dataset", required=True)
    best.add_argument(
        "-m",
        "--models",
        nargs="+",
        required=True,
        metavar="TRAINER:CONFIGURATION[:PLANS]",
        help="e.g. nnUNetTrainer:3d_fullres nnUNetTrainerDINOv3FFA:3d_fm_dinov3_ffa",
    )
    best.add_argument("-f", "--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    best.add_argument("-np", type=int, default=1)
    best.add_argument("--disable_ensembling", action="store_true")
    best.set_defaults(func=_cmd_find_best)

    evaluate = sub.add_parser(
        "evaluate", help="nnUNetv2_evaluate_folder's metrics plus clDice, Betti errors and HD95, per class and binary"
    )
    evaluate.add_argument("ref", metavar="REF_FOLDER", help="folder with reference segmentations")
    evaluate.add_argument("pred", metavar="PRED_FOLDER", help="folder with predicted segmentations")
    evaluate.add_argument("-djfile", required=True, help="dataset.json file")
    evaluate.add_argument("-pfile", help="plans.json file (optional: its label manager class)")
    evaluate.add_argument("-o", help="output summary .json (default: PRED_FOLDER/summary.json)")
    evaluate.add_argument(
        "-np", type=int, default=None, help="worker processes (default: nnU-Net's, nnUNet_def_n_proc or 8)"
    )
    evaluate.add_argument("--chill", action="store_true", help="score only the predicted cases")
    evaluate.add_argument(
        "--conventions",
        choices=("nnunet", "topcow"),
        default="nnunet",
        help="metric rules: nnunet (default; nnU-Net's NaN-for-empty rules) or topcow (TopCoW challenge's evaluation)",
    )
    evaluate.set_defaults(func=_cmd_evaluate)

    demo = sub.add_parser("demo", help="run the main job end to end on synthetic data")
    demo.add_argument("--workdir", default="demo_run")
    demo.add_argument("--trainer", default=None, help="trainer (default: the flagship)")
    demo.add_argument("--epochs", type=int, default=None)
    demo.add_argument("--iterations", type=int, default=None)
    demo.add_argument("--device", default=None, help=DEVICE_HELP)
    demo.set_defaults(func=_cmd_demo)
    return parser


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through nnunet_commands.run_in_own_group, which stops its children


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handle = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if handle else None
    try:
        return args.func(args)
    except UserInputError as exc:
        return report(exc)
    finally:
        if handle:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
