"""The main job: synthetic few-shot data -> plan/preprocess -> plans add -> train -> predict -> evaluate."""

from __future__ import annotations

import json
from pathlib import Path

from nnunet_fm.demo_data import DemoSpec, write_demo_dataset
from nnunet_fm.environment import default_device
from nnunet_fm.nnunet_commands import Workspace, plan_and_preprocess, train_predict_evaluate
from nnunet_fm.templates import template_for_trainer

DEMO_DATASET_ID = 901
DEMO_SPEC = DemoSpec(shape=(24, 64, 64), spacing=(1.5, 0.7, 0.7))

# The flagship trainer, on any device: tiny random-weight DINOv3-architecture encoder
# (real weights: documentation/recipes.md).
FLAGSHIP = {
    "trainer": "nnUNetTrainerDINOv3FFA",
    "set": [
        'encoder_kwargs={"embed_dim":64,"depth":4,"num_heads":2}',
        "taps=[1,2,3]",
        "encoder_weights=none",
        "agg_heads=2",
        "few_shot_k=5",
        "inplane_size=64",  # the demo's whole 64x64 slices at their own spacing (the reference: 336 on GPU)
    ],
}


def prepare_dataset(
    ws: Workspace,
    dataset_id: int = DEMO_DATASET_ID,
    num_train: int = 6,
    num_test: int = 3,
    spec: DemoSpec = DEMO_SPEC,
    seed: int = 0,
) -> Path:
    """Write the demo dataset (unless present), check it, and run stock plan + preprocess."""
    existing = list(ws.raw.glob(f"Dataset{dataset_id:03d}_*"))
    folder = (
        existing[0]
        if existing
        else write_demo_dataset(ws.raw, dataset_id, num_train=num_train, num_test=num_test, spec=spec, seed=seed)
    )
    ws.run("nnunet-fm", "check-dataset", str(folder))
    if not (ws.preprocessed / folder.name / "nnUNetPlans.json").is_file():
        plan_and_preprocess(ws, dataset_id)
    return folder


def add_plans(ws: Workspace, dataset_id: int, template: str, settings: list[str], name: str | None = None) -> str:
    """``nnunet-fm plans add`` (and ``nnUNetv2_preprocess`` when the configuration has its own data); its name."""
    from nnunet_fm.plans import add_configuration, parse_assignments

    with ws.environment():
        result = add_configuration(dataset_id, template, name, overrides=parse_assignments(settings))
    if result.preprocess_command:
        ws.run("nnUNetv2_preprocess", "-d", str(dataset_id), "-c", result.configuration, "-np", ws.processes)
    return result.configuration


def score_line(scores: dict) -> str:
    """Dice beside clDice and the Betti-0 error of a score record (``nnunet_commands.predict_evaluate``)."""
    line = f"per-class Dice {scores['per_class_dice']}, mean {scores['mean_dice']}"
    if "binary_cldice" in scores:
        line += (
            f"; per-class clDice {scores['per_class_cldice']}, binary clDice {scores['binary_cldice']}, "
            f"binary Betti-0 error {scores['binary_betti0_error']}, binary HD95 {scores['binary_hd95']} mm"
        )
    return line


def run_demo(
    workdir: str | Path,
    trainer: str | None = None,
    epochs: int | None = None,
    iterations: int | None = None,
    device: str | None = None,
) -> dict:
    """Run the whole main job; prints progress, returns the scores (Dice, clDice, Betti-0, HD95), writes overlay.png."""
    device = device or default_device()
    template, trainer = template_for_trainer(trainer or FLAGSHIP["trainer"])
    settings = list(FLAGSHIP["set"]) if trainer == FLAGSHIP["trainer"] else ["few_shot_k=5"]
    settings += [
        f"num_epochs={epochs or 4}",
        f"num_iterations_per_epoch={iterations or 10}",
        "num_val_iterations_per_epoch=2",
    ]
    ws = Workspace(Path(workdir), log=Path(workdir) / "commands.log")
    print(f"[1/4] demo data + nnUNetv2_plan_and_preprocess in {ws.root} (log: {ws.log})")
    folder = prepare_dataset(ws)
    print(f"[2/4] nnunet-fm plans add --template {template}")
    configuration = add_plans(ws, DEMO_DATASET_ID, template, settings)
    print(f"[3/4] nnUNetv2_train / nnUNetv2_predict / nnunet-fm evaluate with {trainer} on {device}")
    scores = train_predict_evaluate(ws, DEMO_DATASET_ID, configuration, trainer, device=device)
    case = sorted((folder / "labelsTs").glob("*.nii.gz"))[0]
    from nnunet_fm.overlay import class_names_from_dataset_json, write_overlay

    png = write_overlay(
        folder / "imagesTs" / case.name.replace(".nii.gz", "_0000.nii.gz"),
        case,
        Path(scores["prediction"]) / case.name,
        ws.root / "overlay.png",
        class_names_from_dataset_json(json.loads((folder / "dataset.json").read_text())),
    )
    print(f"[4/4] {score_line(scores)}; overlay (MIPs + slice): {png}")
    if trainer == FLAGSHIP["trainer"]:
        print(
            "Note: this demo used a tiny DINOv3-architecture encoder with RANDOM weights. For real results set "
            "encoder_weights to a DINOv3 checkpoint (timm, Meta or HF format) or 'hub' when online; see "
            "documentation/recipes.md."
        )
    return {"trainer": trainer, "configuration": configuration, **scores, "overlay": str(png)}
