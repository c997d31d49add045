"""End to end through the real nnUNetv2_* commands (subprocesses), tiny data, a few iterations on CPU."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_fm.demo import add_plans
from nnunet_fm.nnunet_commands import mean_dice, plan_like_source, predict, train_predict_evaluate

pytestmark = pytest.mark.e2e
DATASET_ID = 951  # the planned_workspace fixture's dataset (tests/conftest.py)
SHORT = ["num_epochs=1", "num_iterations_per_epoch=2", "num_val_iterations_per_epoch=1", "few_shot_k=3"]
TINY_ENCODER = [
    'encoder_kwargs={"embed_dim":32,"depth":2,"num_heads":2}',
    "taps=[0,1,1]",
    "encoder_weights=none",
    "vit_amp=false",
]


def _model_folder(ws, trainer, configuration):
    return ws.results / ws.dataset_folder(DATASET_ID).name / f"{trainer}__nnUNetPlans__{configuration}"


def _check_scores(scores):
    assert set(scores["per_class_dice"]) == {"1", "2"}
    assert all(0.0 <= v <= 1.0 for v in scores["per_class_dice"].values())


def test_doctor_resolves_every_plugin_trainer(planned_workspace):
    output = planned_workspace.run("nnunet-fm", "doctor")
    assert "[ok] trainer nnUNetTrainerDINOv3FFA" in output and "[ok] trainer nnUNetTrainerDINOv3Cube" in output


def _train_ffa(ws, schedule: list[str], name: str | None = None) -> tuple[str, dict]:
    """A few-shot DINOv3-FFA model (tiny random encoder, patch 16x64x64) trained through stock nnUNetv2_train,
    fold 0, then predicted and evaluated; its configuration and scores. The patch is larger than the 16x48x48
    volumes: nnU-Net pads in training and prediction."""
    settings = [*schedule, "patch_size=[16,64,64]", *TINY_ENCODER, "agg_heads=2", "inplane_size=48"]
    configuration = add_plans(ws, DATASET_ID, "dinov3_ffa", settings, name=name)
    scores = train_predict_evaluate(
        ws, DATASET_ID, configuration, "nnUNetTrainerDINOv3FFA", predict_args=("--disable_tta",)
    )
    return configuration, scores


@pytest.fixture(scope="module")
def ffa_model(planned_workspace):
    """The stock-command path of the flagship in the fast tier: 1 epoch of 2 iterations (SHORT)."""
    return _train_ffa(planned_workspace, SHORT)


@pytest.fixture(scope="module")
def ffa_pseudolabel_source(planned_workspace):
    """Trained long enough (2 x 6 iterations) to predict some vessel voxels, which pseudo-labelling needs."""
    schedule = [*SHORT[2:], "num_epochs=2", "num_iterations_per_epoch=6"]
    return _train_ffa(planned_workspace, schedule, name="3d_fm_dinov3_ffa_source")


def test_dinov3_ffa_trains_predicts_and_evaluates_with_stock_commands(planned_workspace, ffa_model):
    ws = planned_workspace
    configuration, scores = ffa_model
    _check_scores(scores)
    # nnunet-fm evaluate's vessel metrics beside Dice, per class and for the merged foreground
    summary = json.loads((Path(scores["prediction"]) / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == 2 and {"clDice", "Betti0_error", "HD95"} <= set(summary["binary"])
    assert set(scores["per_class_cldice"]) == {"1", "2"} and scores["binary_betti0_error"] >= 0
    model = _model_folder(ws, "nnUNetTrainerDINOv3FFA", configuration)
    fold = model / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file() and list((fold / "validation").glob("*.npz"))
    assert len(json.loads((fold / "fewshot_cases.json").read_text())["cases"]) == 3
    assert json.loads((model / "plans.json").read_text())["configurations"][configuration]["patch_size"] == [16, 64, 64]
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "Prior bias log(f_c)" in log and "frozen" in log
    # the reference never mirrors: the checkpoint allows no axes, so a plain nnUNetv2_predict (TTA not disabled)
    # gives exactly the --disable_tta prediction
    plain = predict(ws, DATASET_ID, configuration, "nnUNetTrainerDINOv3FFA", 0, ws.root / "predictions" / "ffa_tta")
    cases = sorted(p.name for p in plain.glob("*.nii.gz"))
    assert len(cases) == 2
    for case in cases:
        ours, no_tta = (
            sitk.GetArrayFromImage(sitk.ReadImage(str(d / case))) for d in (plain, Path(scores["prediction"]))
        )
        assert np.array_equal(ours, no_tta)


@pytest.mark.slow
def test_dinov3_cube_two_pass_trains_predicts_and_evaluates(planned_workspace):
    ws = planned_workspace
    configuration = add_plans(ws, DATASET_ID, "dinov3_cube", [*SHORT, *TINY_ENCODER, "cube_size=[8,16,16]"])
    scores = train_predict_evaluate(
        ws, DATASET_ID, configuration, "nnUNetTrainerDINOv3Cube", predict_args=("--disable_tta",)
    )
    _check_scores(scores)


@pytest.mark.slow
def test_ensemble_plugin_with_stock_nnunet(planned_workspace, ffa_model):
    """find_best_configuration + nnUNetv2_ensemble over the FFA model and stock nnU-Net (fold 0, --npz)."""
    ws = planned_workspace
    ffa = ffa_model[0]
    ws.run(
        "nnUNetv2_train",
        str(DATASET_ID),
        "3d_fullres",
        "0",
        "-tr",
        "nnUNetTrainer_fmtest",
        "--npz",
        "-device",
        "cpu",
        extra_env={"nnUNet_n_proc_DA": "0"},
    )
    # nnUNetv2_find_best_configuration crosses every -c with every -tr; explicit pairs go through its API
    output = ws.run(
        "nnunet-fm",
        "find-best",
        "-d",
        str(DATASET_ID),
        "-m",
        "nnUNetTrainer_fmtest:3d_fullres",
        f"nnUNetTrainerDINOv3FFA:{ffa}",
        "-f",
        "0",
    )
    assert "ensemble" in output.lower()
    inference = json.loads((ws.results / ws.dataset_folder(DATASET_ID).name / "inference_information.json").read_text())
    keys = set(inference["all_results"])
    assert (
        f"nnUNetTrainerDINOv3FFA__nnUNetPlans__{ffa}" in keys
        and "nnUNetTrainer_fmtest__nnUNetPlans__3d_fullres" in keys
    )
    assert any(k.startswith("ensemble___") for k in keys)
    folder = ws.dataset_folder(DATASET_ID)
    outputs = []
    for trainer, configuration in (("nnUNetTrainer_fmtest", "3d_fullres"), ("nnUNetTrainerDINOv3FFA", ffa)):
        out = predict(
            ws,
            DATASET_ID,
            configuration,
            trainer,
            0,
            ws.root / "ens_inputs" / trainer,
            "cpu",
            ("--disable_tta", "--save_probabilities"),
        )
        outputs.append(str(out))
    ensembled = ws.root / "ensembled"
    ws.run("nnUNetv2_ensemble", "-i", *outputs, "-o", str(ensembled), "-np", "1")
    model = _model_folder(ws, "nnUNetTrainerDINOv3FFA", ffa)
    ws.run(
        "nnUNetv2_evaluate_folder",
        str(folder / "labelsTs"),
        str(ensembled),
        "-djfile",
        str(model / "dataset.json"),
        "-pfile",
        str(model / "plans.json"),
    )
    _check_scores(mean_dice(ensembled / "summary.json"))


@pytest.mark.slow
def test_lightmedseg_trains_predicts_and_evaluates_with_stock_commands(planned_workspace):
    ws = planned_workspace
    configuration = add_plans(ws, DATASET_ID, "lightmedseg", [*SHORT, "batch_size=2"])
    scores = train_predict_evaluate(
        ws, DATASET_ID, configuration, "nnUNetTrainerLightMedSeg", predict_args=("--disable_tta",)
    )
    _check_scores(scores)


@pytest.mark.slow
def test_stock_trainer_selects_lightmedseg_through_network_class_name(planned_workspace):
    """Plan-file customisation only: a stock nnU-Net trainer builds LightMedSeg from network_class_name."""
    ws = planned_workspace
    configuration = add_plans(ws, DATASET_ID, "lightmedseg", ["batch_size=2"], name="3d_lms_stock")
    scores = train_predict_evaluate(
        ws, DATASET_ID, configuration, "nnUNetTrainerNoDeepSupervision_fmtest", predict_args=("--disable_tta",)
    )
    _check_scores(scores)


def _pseudolabel(ws, model, fold, unlabelled, out_id, *selection):
    return ws.run(
        "nnunet-fm",
        *("pseudolabel", "-m", str(model), "-f", fold, "-i", str(unlabelled), "--out-id", str(out_id), "--disable_tta"),
        *selection,
    )


@pytest.mark.slow
def test_pseudolabel_then_retrain_with_stock_commands(planned_workspace, ffa_pseudolabel_source):
    """K-shot FFA -> nnunet-fm pseudolabel -> plan like the source (integrity check) -> re-train LightMedSeg and
    FFA on every case (fold all) -> predict -> evaluate; then a second round pseudo-labels from the re-trained FFA.
    """
    ws = planned_workspace
    source = ws.dataset_folder(DATASET_ID)
    model = _model_folder(ws, "nnUNetTrainerDINOv3FFA", ffa_pseudolabel_source[0])
    few_shot = set(json.loads((model / "fold_0" / "fewshot_cases.json").read_text())["cases"])
    unlabelled = ws.root / "unlabelled"
    unlabelled.mkdir()
    for image in sorted((source / "imagesTr").glob("*_0000.nii.gz")):
        if image.name[: -len("_0000.nii.gz")] not in few_shot:
            shutil.copy(image, unlabelled / image.name)
    before = {p: p.stat().st_mtime_ns for p in source.rglob("*")}

    with pytest.raises(RuntimeError, match="No case passed --case-threshold"):
        _pseudolabel(ws, model, "0", unlabelled, 952, "--case-threshold", "1.0")
    assert not list(ws.raw.glob("Dataset952_*")) and not list(ws.raw.glob(".Dataset952*"))  # nothing written
    output = _pseudolabel(
        ws, model, "0", unlabelled, 952, "--keep-fraction", "0.5", "--voxel-threshold", "0.6", "--add-unlabelled"
    )
    assert "pseudo-labelled" in output and "nnUNetv2_move_plans_between_datasets -s 951 -t 952" in output
    assert {p: p.stat().st_mtime_ns for p in source.rglob("*")} == before  # source dataset untouched
    new = ws.dataset_folder(952)
    meta = json.loads((new / "dataset.json").read_text())
    assert meta["labels"]["ignore"] == 3 and meta["numTraining"] == len(list((new / "labelsTr").iterdir()))
    manifest = json.loads((new / "pseudolabel_manifest.json").read_text())
    assert set(manifest["labelled_cases"]) == few_shot and any(c["kept"] for c in manifest["pseudo_cases"])
    assert manifest["round"] == 1
    # the cases not kept entered as unlabelled cases (all-ignore label maps) for ssl=mean_teacher
    dropped = [c for c in manifest["pseudo_cases"] if not c["kept"]]
    assert dropped and manifest["unlabelled_cases"] == [f"ul_{c['case']}" for c in dropped]
    for case in manifest["unlabelled_cases"]:
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(new / "labelsTr" / f"{case}.nii.gz")))
        assert (label == 3).all()
    plan_like_source(ws, DATASET_ID, 952)  # runs --verify_dataset_integrity on the new dataset
    plans = [json.loads((ws.preprocessed / d.name / "nnUNetPlans.json").read_text()) for d in (source, new)]
    key = "foreground_intensity_properties_per_channel"
    assert plans[1][key] == plans[0][key] and plans[1]["dataset_name"] == new.name
    (new / "imagesTs").symlink_to(source / "imagesTs")
    (new / "labelsTs").symlink_to(source / "labelsTs")
    configuration = add_plans(ws, 952, "lightmedseg", [*SHORT[:3], "batch_size=2"])
    scores = train_predict_evaluate(
        ws, 952, configuration, "nnUNetTrainerLightMedSeg", "all", predict_args=("--disable_tta",)
    )
    _check_scores(scores)

    # round 2: FFA re-trained on every case of round 1 labels again; truth still comes from the original dataset
    schedule = ["num_epochs=2", "num_iterations_per_epoch=6", "num_val_iterations_per_epoch=1", "few_shot_k=null"]
    ffa = add_plans(
        ws, 952, "dinov3_ffa", [*schedule, *TINY_ENCODER, "patch_size=[16,64,64]", "agg_heads=2", "inplane_size=48"]
    )
    ws.run("nnUNetv2_train", "952", ffa, "all", "-tr", "nnUNetTrainerDINOv3FFA", "-device", "cpu")
    model_two = ws.results / new.name / f"nnUNetTrainerDINOv3FFA__nnUNetPlans__{ffa}"
    _pseudolabel(ws, model_two, "all", unlabelled, 953, "--keep-fraction", "1.0", "--voxel-threshold", "0.6")
    round_two = ws.dataset_folder(953)
    manifest_two = json.loads((round_two / "pseudolabel_manifest.json").read_text())
    assert manifest_two["round"] == 2 and manifest_two["source_dataset"] == str(source)
    assert set(manifest_two["labelled_cases"]) == few_shot
    labels = sorted(p.name for p in (round_two / "labelsTr").iterdir())
    assert not [name for name in labels if name.startswith("pl_pl_")] and len(labels) == len(set(labels))
    assert json.loads((round_two / "dataset.json").read_text())["labels"]["ignore"] == 3
    plan_like_source(ws, 952, 953)
