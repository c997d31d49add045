"""Datasets with fewer than five cases: leave-one-out folds instead of scikit-learn's refusal."""

import json
import shutil

import pytest

from nnunet_fm.hooks.splits import few_case_note, leave_one_out_splits
from nnunet_fm.nnunet_commands import Workspace

pytestmark = pytest.mark.e2e


def test_leave_one_out_splits_and_notes():
    splits = leave_one_out_splits(["c", "a", "b"])
    assert splits == [
        {"train": ["b", "c"], "val": ["a"]},
        {"train": ["a", "c"], "val": ["b"]},
        {"train": ["a", "b"], "val": ["c"]},
    ]
    assert few_case_note(5) is None and "fold 'all'" in few_case_note(1) and "0..2" in few_case_note(3)


@pytest.fixture(scope="module")
def three_case_workspace(planned_workspace, tmp_path_factory):
    """The fixture dataset cut to 3 training cases (dataset 961), planned and preprocessed by stock nnU-Net."""
    from nnunet_fm.demo import add_plans
    from nnunet_fm.nnunet_commands import plan_and_preprocess

    ws = Workspace(tmp_path_factory.mktemp("three"), extra_trainer_folders=planned_workspace.extra_trainer_folders)
    source = planned_workspace.dataset_folder(951)
    target = ws.raw / "Dataset961_ThreeCases"
    shutil.copytree(source, target)
    for case in sorted((target / "labelsTr").glob("*.nii.gz"))[3:]:
        case.unlink()
        (target / "imagesTr" / case.name.replace(".nii.gz", "_0000.nii.gz")).unlink()
    meta = json.loads((target / "dataset.json").read_text())
    (target / "dataset.json").write_text(json.dumps({**meta, "numTraining": 3}))
    plan_and_preprocess(ws, 961)
    settings = ["num_epochs=1", "num_iterations_per_epoch=1", "num_val_iterations_per_epoch=1", "batch_size=2"]
    return ws, add_plans(ws, 961, "lightmedseg", settings)


@pytest.mark.slow
def test_three_cases_train_fold_0_with_leave_one_out(three_case_workspace):
    ws, configuration = three_case_workspace
    ws.run("nnUNetv2_train", "961", configuration, "0", "-tr", "nnUNetTrainerLightMedSeg", "-device", "cpu")
    splits = json.loads((ws.preprocessed / "Dataset961_ThreeCases" / "splits_final.json").read_text())
    assert len(splits) == 3 and all(len(s["train"]) == 2 and len(s["val"]) == 1 for s in splits)
    with pytest.raises(RuntimeError, match=r"folds 0\.\.2; fold 3 does not exist"):
        ws.run("nnUNetv2_train", "961", configuration, "3", "-tr", "nnUNetTrainerLightMedSeg", "-device", "cpu")
