"""The catalogue of bad inputs the plugin knows: each gets a message naming the problem and the fix, and no user
file changes (hashes of the user's folders before and after). In-process CLI calls; no training."""

import hashlib
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_fm.cli import main

DATASET_ID = 951  # the planned_workspace fixture's dataset (tests/conftest.py)


def _digest(folder: Path) -> dict[str, str]:
    """Hash of every file under ``folder`` (names included), hidden files too."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".lock" not in p.name
    }


def _raw_copy(env, tmp: Path, mutate: Callable[[Path], None]) -> list[str]:
    """A copy of the fixture's raw dataset with one defect; returns the check-dataset arguments."""
    folder = tmp / "Dataset777_Bad"
    shutil.copytree(env.dataset_folder(DATASET_ID), folder)
    mutate(folder)
    return ["check-dataset", str(folder)]


def _first(folder: Path, sub: str) -> Path:
    return sorted((folder / sub).glob("*.nii.gz"))[0]


def _nan_voxels(folder: Path) -> None:
    """NaN in a .nrrd case (SimpleITK, nnU-Net's reader, turns NaN in NIfTI into 0 but keeps it in NRRD)."""
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        for path in sorted((folder / sub).glob("*.nii.gz")):
            image = sitk.ReadImage(str(path))
            if sub == "imagesTr" and path == _first(folder, "imagesTr"):
                array = sitk.GetArrayFromImage(image).astype(np.float32)
                array[0, 0, 0] = np.nan
                image, reference = sitk.GetImageFromArray(array), image
                image.CopyInformation(reference)
            sitk.WriteImage(image, str(path).replace(".nii.gz", ".nrrd"))
            path.unlink()
    meta = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**meta, "file_ending": ".nrrd"}))


def _rename_channel(folder: Path) -> None:
    path = _first(folder, "imagesTr")
    path.rename(path.with_name(path.name.replace("_0000", "_0001")))


def _extra_channel(folder: Path) -> None:
    path = _first(folder, "imagesTr")
    shutil.copy(path, path.with_name(path.name.replace("_0000", "_0001")))


def _orphan_label(folder: Path) -> None:
    shutil.copy(_first(folder, "labelsTr"), folder / "labelsTr" / "ghost_999.nii.gz")


def _empty_images(folder: Path) -> None:
    for path in (folder / "imagesTr").iterdir():
        path.unlink()
    for path in (folder / "labelsTr").iterdir():
        path.unlink()


def _bad_json(folder: Path) -> None:
    (folder / "dataset.json").write_text('{"channel_names": {"0": "CT"},')


def _undeclared_label(folder: Path) -> None:
    meta = json.loads((folder / "dataset.json").read_text())
    meta["labels"].pop("vein")
    (folder / "dataset.json").write_text(json.dumps(meta))


def _missing_label(folder: Path) -> None:
    _first(folder, "labelsTr").unlink()


def _shifted_spacing(folder: Path) -> None:
    path = _first(folder, "labelsTr")
    image = sitk.ReadImage(str(path))
    image.SetSpacing([s * 2 for s in image.GetSpacing()])
    sitk.WriteImage(image, str(path))


def _moved_origin(folder: Path) -> None:
    path = _first(folder, "labelsTr")
    image = sitk.ReadImage(str(path))
    image.SetOrigin([o + 5.0 for o in image.GetOrigin()])
    sitk.WriteImage(image, str(path))


def _flipped_direction(folder: Path) -> None:
    path = _first(folder, "labelsTr")
    image = sitk.ReadImage(str(path))
    direction = list(image.GetDirection())
    direction[0] = -direction[0]
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))


def _truncated_image(folder: Path) -> None:
    path = _first(folder, "imagesTr")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage_label(folder: Path) -> None:
    _first(folder, "labelsTr").write_bytes(b"not an image at all" * 10)


def _wrong_num_training(folder: Path) -> None:
    path = folder / "dataset.json"
    meta = json.loads(path.read_text())
    meta["numTraining"] = meta["numTraining"] + 3
    path.write_text(json.dumps(meta))


PLANS = ["plans", "add", "-d", str(DATASET_ID)]


def _pseudolabel(*extra: str) -> Callable:
    """pseudolabel arguments (the fixture has no trained model; checks that run before prediction)."""
    base = ["pseudolabel", "-d", str(DATASET_ID), "-c", "3d_fullres", "--out-id", "802"]
    return lambda env, tmp: [*base, "-i", str(tmp), *extra]


def _plain_model(env, tmp: Path) -> list[str]:
    """predict-with on a model trained without Mean Teacher (one set of weights)."""
    import torch

    (tmp / "model" / "fold_0").mkdir(parents=True)
    torch.save({"network_weights": {}}, tmp / "model" / "fold_0" / "checkpoint_final.pth")
    return ["predict-with", "student", "-m", str(tmp / "model"), "-f", "0"]


def _weights_file(content: Callable[[Path], None]) -> Callable:
    """plans add naming an encoder_weights file that ``content`` writes (in the test's own folder)."""

    def build(env, tmp: Path) -> list[str]:
        path = tmp / "weights.pth"
        content(path)
        return [*FFA, "--set", f"encoder_weights={path}"]

    return build


def _garbage_weights(path: Path) -> None:
    path.write_bytes(b"not a checkpoint" * 64)


def _foreign_layout(path: Path) -> None:
    import torch

    torch.save({"backbone_layer.kernel": torch.zeros(4, 4)}, path)


def _other_encoder(path: Path) -> None:
    """timm weights of a 2-block, 32-wide ViT: a recognised layout, but not the template's ViT-S/16."""
    import torch

    from nnunet_fm.encoders import FrozenViTEncoder

    tiny = FrozenViTEncoder("vit_small_patch16_dinov3", taps=(0,), embed_dim=32, depth=2, num_heads=2)
    torch.save(tiny.vit.state_dict(), path)


NOT_PREPROCESSED = "3d_catalogue_not_preprocessed"


def _train_before_preprocess(env, tmp: Path) -> list[str]:
    """plans add (own preprocessed data: an in-plane size nothing else uses), then nnUNetv2_train at once."""
    assert main([*FFA, "--name", NOT_PREPROCESSED, "--set", "inplane_size=320", "encoder_weights=none"]) == 0
    return ["nnUNetv2_train", str(DATASET_ID), NOT_PREPROCESSED, "0", "-tr", "nnUNetTrainerDINOv3FFA", "-device", "cpu"]


def _run(args: list[str], monkeypatch) -> int:
    """``nnunet-fm`` in-process; ``nnUNetv2_train`` in-process through nnU-Net's own entry point, reporting a
    plugin error as the plugin's excepthook does in the real command (tests/test_errors.py checks that hook)."""
    if args[0] != "nnUNetv2_train":
        return main(args)
    import torch
    from nnunetv2.run.run_training import run_training_entry

    from nnunet_fm.errors import UserInputError, report

    threads = torch.get_num_threads()  # -device cpu sets it to every core
    monkeypatch.setattr(sys, "argv", args)
    try:
        run_training_entry()
    except UserInputError as exc:
        return report(exc)
    finally:
        torch.set_num_threads(threads)
    return 0


FFA = [*PLANS, "--template", "dinov3_ffa"]
# (id, arguments or a builder of them, text the message must contain: the problem and the fix)
CATALOGUE = [
    ("unknown-template", [*PLANS, "--template", "nope"], ["Unknown template 'nope'", "Available templates"]),
    ("unknown-key", [*FFA, "--set", "bogus=1"], ["Key 'bogus' is not read", "nnunet-fm plans list"]),
    ("key-of-another-trainer", [*FFA, "--set", "two_pass=false"], ["read by: dinov3_cube"]),
    ("arch-prefix", [*FFA, "--set", "arch.agg_heads=2"], ["--set agg_heads=..."]),
    ("not-an-int", [*FFA, "--set", "few_shot_k=abc"], ['few_shot_k="abc"', "expected an integer"]),
    ("word-for-number", [*FFA, "--set", "num_epochs=zero"], ["num_epochs", "expected an integer"]),
    ("below-minimum", [*FFA, "--set", "num_epochs=0"], ["num_epochs=0", "in [1"]),
    ("malformed-json", [*FFA, "--set", 'encoder_kwargs={"embed_dim":48,'], ["encoder_kwargs", "a JSON object"]),
    ("bad-choice", [*FFA, "--set", "augmentation=heavy"], ["augmentation", '"reference"']),
    ("bad-mirror-axes", [*FFA, "--set", "mirror_axes=[0,5]"], ["mirror_axes", "axes in 0..2"]),
    ("twice-different", [*FFA, "--set", "num_epochs=1", "--set", "num_epochs=2"], ["twice", "keep one"]),
    ("no-equals", [*FFA, "--set", "num_epochs"], ["key=value"]),
    ("patch-breaks-rules", [*FFA, "--set", "patch_size=[8,40,40]", "inplane_size=null"], ["Nearest valid patch"]),
    ("patch-not-a-list", [*FFA, "--set", "patch_size=64"], ["patch_size=64", "a JSON list of 3 integers in [1"]),
    ("patch-2d", [*FFA, "--set", "patch_size=[64,64]"], ["patch_size=[64, 64]", "a JSON list of 3 integers"]),
    ("batch-zero", [*FFA, "--set", "batch_size=0"], ["batch_size=0", "an integer in [1"]),
    ("bad-global-patch", [*FFA, "--set", "global_patch=yes"], ['global_patch="yes"', "true or false"]),
    ("bad-max-depth", [*FFA, "--set", "max_depth=0"], ["max_depth=0", "an integer in [1"]),
    (
        "inplane-not-16",
        [*FFA, "--set", "inplane_size=100"],
        ["inplane_size=100", "not a multiple of 16", "inplane_size=96 or 112"],
    ),
    ("bad-intensity", [*FFA, "--set", "intensity=raw"], ['intensity="raw"', '"parent" or "affine"']),
    (
        "cube-size-breaks",
        [*PLANS, "--template", "dinov3_cube", "--set", "cube_size=[3,16,16]", "patch_size=[16,48,48]"],
        ["breaks the template's patch rules"],
    ),
    ("name-is-parent", [*FFA, "--name", "3d_fullres"], ["--name must differ from the parent"]),
    ("missing-plans", [*FFA, "--plans", "NoSuchPlans"], ["does not exist", "nnUNetv2_plan_and_preprocess -d 951"]),
    ("unknown-dataset", ["plans", "add", "-d", "4242", "--template", "dinov3_ffa"], ["4242", "nnunet-fm env"]),
    ("show-unknown-config", ["plans", "show", "-d", str(DATASET_ID), "-c", "nope"], ["no configuration 'nope'"]),
    ("show-stock-config", ["plans", "show", "-d", str(DATASET_ID), "-c", "3d_fullres"], ["name the trainer with -tr"]),
    (
        "check-missing-0000",
        lambda env, tmp: _raw_copy(env, tmp, _rename_channel),
        ["no vessel_000_0000", "numbered from _0000"],
    ),
    ("check-extra-channel", lambda env, tmp: _raw_copy(env, tmp, _extra_channel), ["beyond the 1 channel"]),
    ("check-orphan-label", lambda env, tmp: _raw_copy(env, tmp, _orphan_label), ["ghost_999", "has no image"]),
    ("check-empty", lambda env, tmp: _raw_copy(env, tmp, _empty_images), ["holds no training case"]),
    ("check-nan", lambda env, tmp: _raw_copy(env, tmp, _nan_voxels), ["NaN voxels", "replace them"]),
    ("check-bad-json", lambda env, tmp: _raw_copy(env, tmp, _bad_json), ["not valid JSON", "line 1"]),
    ("check-undeclared-label", lambda env, tmp: _raw_copy(env, tmp, _undeclared_label), ["not declared", "relabel"]),
    ("check-missing-label", lambda env, tmp: _raw_copy(env, tmp, _missing_label), ["label file", "is missing"]),
    ("check-spacing", lambda env, tmp: _raw_copy(env, tmp, _shifted_spacing), ["spacing", "resample it"]),
    ("check-no-folder", ["check-dataset", "/nonexistent/Dataset1_X"], ["dataset.json is missing"]),
    ("check-origin", lambda env, tmp: _raw_copy(env, tmp, _moved_origin), ["vessel_000", "origin", "CopyInformation"]),
    (
        "check-direction",
        lambda env, tmp: _raw_copy(env, tmp, _flipped_direction),
        ["vessel_000", "direction", "CopyInformation"],
    ),
    (
        "check-truncated-image",
        lambda env, tmp: _raw_copy(env, tmp, _truncated_image),
        ["vessel_000_0000.nii.gz cannot be read", "re-export or re-copy"],
    ),
    (
        "check-garbage-label",
        lambda env, tmp: _raw_copy(env, tmp, _garbage_label),
        ["vessel_000.nii.gz cannot be read", "re-export or re-copy"],
    ),
    (
        "check-num-training",
        lambda env, tmp: _raw_copy(env, tmp, _wrong_num_training),
        ["numTraining 8", "holds 5 training", '"numTraining": 5'],
    ),
    (
        "demo-zero-shape",
        lambda env, tmp: ["demo-data", "--out", str(tmp), "--id", "800", "--shape", "0", "48", "48"],
        ["at least 8 voxels"],
    ),
    (
        "demo-no-train",
        lambda env, tmp: ["demo-data", "--out", str(tmp), "--id", "800", "--train", "0"],
        ["at least 1 training case"],
    ),
    ("demo-negative-id", lambda env, tmp: ["demo-data", "--out", str(tmp), "--id", "-5"], ["1..999"]),
    (
        "demo-same-id",
        lambda env, tmp: ["demo-data", "--out", str(env.raw), "--id", str(DATASET_ID), "--name", "Other"],
        ["already uses id 951", "another --id"],
    ),
    ("pseudo-keep-zero", _pseudolabel("--keep-fraction", "0"), ["--keep-fraction must be"]),
    ("pseudo-voxel-threshold", _pseudolabel("--voxel-threshold", "1.5"), ["--voxel-threshold must be in [0, 1)"]),
    ("pseudo-no-model", _pseudolabel(), ["checkpoint_final.pth not found", "train the model"]),
    (
        "demo-negative-unlabelled",
        lambda env, tmp: ["demo-data", "--out", str(tmp), "--id", "800", "--unlabelled", "-1"],
        ["--unlabelled -1", "0+ unlabelled"],
    ),
    ("predict-with-plain-model", _plain_model, ["not trained with ssl=mean_teacher", "already uses"]),
    (
        "predict-with-no-checkpoint",
        lambda env, tmp: ["predict-with", "student", "-m", str(tmp), "-f", "0"],
        ["No checkpoint in", "-f"],
    ),
    ("find-best-bad-model", ["find-best", "-d", str(DATASET_ID), "-m", "nnUNetTrainer"], ["TRAINER:CONFIGURATION"]),
    (
        "train-before-preprocess",
        _train_before_preprocess,
        [
            f"Configuration '{NOT_PREPROCESSED}'",
            "has no preprocessed data",
            f"nnUNetv2_preprocess -d Dataset951_FMDemoVessels -plans_name nnUNetPlans -c {NOT_PREPROCESSED}\n",
        ],
    ),
    (
        "taps-out-of-range",
        [*FFA, "--set", "taps=[0,1,20]"],
        ["DINOv3FFA cannot be built", "tap indices [20] are out of range", "[0, 11]", "Change the value with --set"],
    ),
    (
        "cube-up-widths",
        [*PLANS, "--template", "dinov3_cube", "--set", "up_widths=[48,32]"],
        ["DINOv3Cube cannot be built", "one width per x2 upsampling stage", "Change the value with --set"],
    ),
    (
        "weights-missing",
        [*FFA, "--set", "encoder_weights=/nonexistent/dinov3_vits16.pth"],
        ["encoder_weights='/nonexistent/dinov3_vits16.pth'", "does not exist", "'hub'", "'none'"],
    ),
    ("weights-garbage", _weights_file(_garbage_weights), ["encoder_weights=", "Could not read", "safetensors"]),
    ("weights-foreign-layout", _weights_file(_foreign_layout), ["Unrecognised encoder weights layout", "timm"]),
    (
        "weights-other-encoder",
        _weights_file(_other_encoder),
        ["do not match encoder 'vit_small_patch16_dinov3'", "shape-mismatched", "--set encoder="],
    ),
]


@pytest.mark.parametrize("case_id, arguments, expected", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input_names_problem_and_fix_and_changes_nothing(
    nnunet_env, tmp_path, capsys, monkeypatch, case_id, arguments, expected
):
    args = arguments(nnunet_env, tmp_path) if callable(arguments) else arguments
    watched = [nnunet_env.raw, nnunet_env.preprocessed, nnunet_env.results, tmp_path]
    before = [_digest(folder) for folder in watched]
    capsys.readouterr()  # what a builder printed
    assert _run(args, monkeypatch) == 2
    message = capsys.readouterr().err
    for text in expected:
        assert text in message, f"{case_id}: {text!r} not in {message!r}"
    assert "Traceback" not in message
    assert [_digest(folder) for folder in watched] == before


def test_catalogue_size():
    """The closing note reports this number: 59 distinct bad inputs."""
    assert len({c[0] for c in CATALOGUE}) == len(CATALOGUE) == 59
