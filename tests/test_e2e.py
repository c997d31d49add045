"""End to end through the real nnUNetv2_* commands (subprocesses), tiny data, a few iterations on CPU."""

import json

import pytest

from nnunet_fm.demo import add_plans
from nnunet_fm.pipeline import mean_dice, train_predict_evaluate

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


def test_dinov3_ffa_trains_predicts_and_evaluates_with_stock_commands(planned_workspace):
    ws = planned_workspace
    configuration = add_plans(ws, DATASET_ID, "dinov3_ffa", [*SHORT, *TINY_ENCODER, "arch.agg_heads=2"])
    scores = train_predict_evaluate(
        ws, DATASET_ID, configuration, "nnUNetTrainerDINOv3FFA", predict_args=("--disable_tta",)
    )
    _check_scores(scores)
    model = _model_folder(ws, "nnUNetTrainerDINOv3FFA", configuration)
    fold = model / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file() and list((fold / "validation").glob("*.npz"))
    assert len(json.loads((fold / "fewshot_cases.json").read_text())["cases"]) == 3
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "Prior bias log(f_c)" in log and "frozen" in log
    # prediction with mirroring (TTA) from the same model folder
    mirrored = ws.root / "predictions" / "ffa_tta"
    ws.run(
        "nnUNetv2_predict",
        "-i",
        str(ws.dataset_folder(DATASET_ID) / "imagesTs"),
        "-o",
        str(mirrored),
        "-d",
        str(DATASET_ID),
        "-c",
        configuration,
        "-tr",
        "nnUNetTrainerDINOv3FFA",
        "-f",
        "0",
        "-device",
        "cpu",
    )
    assert len(list(mirrored.glob("*.nii.gz"))) == 2


def test_dinov3_cube_two_pass_trains_predicts_and_evaluates(planned_workspace):
    ws = planned_workspace
    configuration = add_plans(ws, DATASET_ID, "dinov3_cube", [*SHORT, *TINY_ENCODER, "cube_size=[8,16,16]"])
    scores = train_predict_evaluate(
        ws, DATASET_ID, configuration, "nnUNetTrainerDINOv3Cube", predict_args=("--disable_tta",)
    )
    _check_scores(scores)


def test_ensemble_plugin_with_stock_nnunet(planned_workspace):
    """find_best_configuration + nnUNetv2_ensemble over the FFA model and stock nnU-Net (fold 0, --npz)."""
    ws = planned_workspace
    ffa = "3d_fm_dinov3_ffa"
    if not (_model_folder(ws, "nnUNetTrainerDINOv3FFA", ffa) / "fold_0" / "checkpoint_final.pth").is_file():
        pytest.fail("run together with test_dinov3_ffa_trains_predicts_and_evaluates_with_stock_commands")
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
    output = ws.run(
        "nnUNetv2_find_best_configuration",
        str(DATASET_ID),
        "-c",
        "3d_fullres",
        ffa,
        "-tr",
        "nnUNetTrainer_fmtest",
        "nnUNetTrainerDINOv3FFA",
        "-f",
        "0",
    )
    assert "ensemble" in output.lower()
    folder = ws.dataset_folder(DATASET_ID)
    outputs = []
    for trainer, configuration in (("nnUNetTrainer_fmtest", "3d_fullres"), ("nnUNetTrainerDINOv3FFA", ffa)):
        out = ws.root / "ens_inputs" / trainer
        ws.run(
            "nnUNetv2_predict",
            "-i",
            str(folder / "imagesTs"),
            "-o",
            str(out),
            "-d",
            str(DATASET_ID),
            "-c",
            configuration,
            "-tr",
            trainer,
            "-f",
            "0",
            "-device",
            "cpu",
            "--disable_tta",
            "--save_probabilities",
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


def test_lightmedseg_trains_predicts_and_evaluates_with_stock_commands(planned_workspace):
    ws = planned_workspace
    configuration = add_plans(ws, DATASET_ID, "lightmedseg", [*SHORT, "batch_size=2"])
    scores = train_predict_evaluate(
        ws, DATASET_ID, configuration, "nnUNetTrainerLightMedSeg", predict_args=("--disable_tta",)
    )
    _check_scores(scores)


def test_stock_trainer_selects_lightmedseg_through_network_class_name(planned_workspace):
    """Plan-file customisation only: a stock nnU-Net trainer builds LightMedSeg from network_class_name."""
    ws = planned_workspace
    configuration = add_plans(ws, DATASET_ID, "lightmedseg", ["batch_size=2"], name="3d_lms_stock")
    scores = train_predict_evaluate(
        ws, DATASET_ID, configuration, "nnUNetTrainerNoDeepSupervision_fmtest", predict_args=("--disable_tta",)
    )
    _check_scores(scores)
