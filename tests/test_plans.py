"""``nnunet-fm plans add`` / templates: patch rules, overrides, atomic writes with backups, clear errors."""

import json

import numpy as np
import pytest

from nnunet_fm import registry
from nnunet_fm.cli import main
from nnunet_fm.errors import UserInputError
from nnunet_fm.plans import add_configuration, build_configuration, parse_assignments, slicing_summary
from nnunet_fm.templates import describe_templates, load_template, resolve_patch, template_names

DATASET_ID = 951  # the planned_workspace fixture's dataset (tests/conftest.py)


def test_every_template_loads_with_declared_options():
    names = template_names()
    assert {"unet_fewshot", "dinov3_ffa", "dinov3_cube", "lightmedseg"} <= set(names)
    for name in names:
        template = load_template(name)
        assert set(template.options) <= set(template.trainer_options())
        assert set(template.arch_kwargs) <= set(template.network_options())
    listing = describe_templates()
    assert "depth_min_fg_frac = 0.0005  [nnUNetTrainerDINOv3FFA default]" in listing
    assert "vit_amp = true  [template dinov3_ffa]" in listing


def test_parse_assignments_reads_json_or_strings():
    parsed = parse_assignments(["a=3", "b=[1,2]", "c=hub", 'd={"x":1}', "e=null"])
    assert parsed == {"a": 3, "b": [1, 2], "c": "hub", "d": {"x": 1}, "e": None}
    with pytest.raises(UserInputError):
        parse_assignments(["novalue"])


def test_patch_is_snapped_when_derived_and_rejected_when_given():
    rules = {"multiple_of": [[1, 16, 16]], "min": [1, 16, 16]}
    assert resolve_patch(rules, [20, 90, 100], None, {}, user_given=False) == [20, 96, 96]
    assert resolve_patch(rules, [3, 5, 5], None, {}, user_given=False) == [3, 16, 16]
    with pytest.raises(UserInputError, match=r"patch_size=\[20,96,96\]"):
        resolve_patch(rules, [20, 90, 100], None, {}, user_given=True)


def test_cube_rule_and_unmeetable_rule():
    rules = {"multiple_of": [[1, 16, 16], "cube_size"], "min": [1, 16, 16]}
    assert resolve_patch(rules, [20, 64, 64], None, {"cube_size": [8, 32, 32]}, False) == [24, 64, 64]
    with pytest.raises(UserInputError, match="cannot be met"):
        resolve_patch({"multiple_of": [[1, 16, 16]], "max": [None, 8, None]}, [4, 32, 32], None, {}, False)


def test_strides_rule_uses_the_architecture():
    arch = {"arch_kwargs": {"strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]]}}
    assert resolve_patch({"multiple_of": ["strides"]}, [10, 30, 30], arch, {}, False) == [10, 32, 32]


def _plans_file(env):
    return env.preprocessed / env.dataset_folder(DATASET_ID).name / "nnUNetPlans.json"


def test_add_writes_configuration_with_backup_and_replaces_same_name(nnunet_env):
    path = _plans_file(nnunet_env)
    before = json.loads(path.read_text())
    result = add_configuration(
        DATASET_ID, "dinov3_ffa", name="3d_test_ffa", overrides={"few_shot_k": 2, "agg_heads": 2, "batch_size": 3}
    )
    plans = json.loads(path.read_text())
    config = plans["configurations"]["3d_test_ffa"]
    assert config["inherits_from"] == "3d_fullres" and config["few_shot_k"] == 2
    assert config["architecture"]["arch_kwargs"]["agg_heads"] == 2 and config["batch_size"] == 3
    assert all(p % 16 == 0 for p in config["patch_size"][1:])
    assert json.loads(result.backup.read_text()) == before  # backup holds the previous file
    assert plans["configurations"]["3d_fullres"] == before["configurations"]["3d_fullres"]
    add_configuration(DATASET_ID, "dinov3_ffa", name="3d_test_ffa", overrides={"few_shot_k": 4})
    again = json.loads(path.read_text())["configurations"]
    assert again["3d_test_ffa"]["few_shot_k"] == 4 and "3d_fullres" in again


@pytest.mark.parametrize(
    "args, message",
    [
        (["--template", "nope"], "Unknown template"),
        (["--template", "dinov3_ffa", "--set", "bogus_key=1"], "Key 'bogus_key' is not read"),
        (["--template", "dinov3_ffa", "--set", "two_pass=false"], "dinov3_cube (nnUNetTrainerDINOv3Cube)"),
        (["--template", "dinov3_ffa", "--set", "arch.agg_heads=2"], "--set agg_heads=..."),
        (["--template", "dinov3_ffa", "--set", "few_shot_k=abc"], "expected an integer"),
        (["--template", "dinov3_ffa", "--set", "num_epochs=zero"], "expected an integer"),
        (["--template", "dinov3_ffa", "--set", 'encoder_kwargs={"embed_dim":48,'], "encoder_kwargs"),
        (["--template", "dinov3_ffa", "--set", "num_epochs=1", "--set", "num_epochs=2"], "twice"),
        (["--template", "dinov3_ffa", "--set", "patch_size=[8,40,40]"], "Nearest valid patch"),
        (["--template", "dinov3_cube", "--set", "cube_size=[3,16,16]", "patch_size=[16,48,48]"], "breaks"),
    ],
)
def test_bad_input_is_a_clear_error_and_leaves_plans_untouched(nnunet_env, capsys, args, message):
    path = _plans_file(nnunet_env)
    before = path.read_bytes()
    backups = set(path.parent.glob("*.bak"))
    assert main(["plans", "add", "-d", str(DATASET_ID), *args]) == 2
    assert message in capsys.readouterr().err
    assert path.read_bytes() == before and set(path.parent.glob("*.bak")) == backups


def test_missing_plans_file_names_the_command_to_run(nnunet_env, capsys):
    assert main(["plans", "add", "-d", str(DATASET_ID), "--template", "dinov3_ffa", "--plans", "NoSuchPlans"]) == 2
    assert "nnUNetv2_plan_and_preprocess -d 951" in capsys.readouterr().err


def test_few_shot_on_a_pseudo_labelled_dataset_is_warned_at_plans_add(nnunet_env, capsys):
    raw = nnunet_env.raw / nnunet_env.dataset_folder(DATASET_ID).name
    args = ["plans", "add", "-d", str(DATASET_ID), "--template", "dinov3_ffa", "--name", "3d_pl_check"]
    assert main(args) == 0
    assert "pseudo-labelled" not in capsys.readouterr().out
    (raw / "pseudolabel_manifest.json").write_text("{}")
    try:
        assert main(args) == 0
        assert "few_shot_k=5 trains on only 5" in capsys.readouterr().out
        assert main([*args, "--set", "few_shot_k=null"]) == 0
        assert "pseudo-labelled" not in capsys.readouterr().out
    finally:
        (raw / "pseudolabel_manifest.json").unlink()


def test_repeated_set_flags_all_apply(nnunet_env):
    args = ["plans", "add", "-d", str(DATASET_ID), "--template", "dinov3_ffa", "--name", "3d_sets"]
    assert (
        main([*args, "--set", "num_epochs=1", "--set", "few_shot_k=3", "initial_lr=0.01", "--set", "agg_heads=2"]) == 0
    )
    config = json.loads(_plans_file(nnunet_env).read_text())["configurations"]["3d_sets"]
    assert (config["num_epochs"], config["few_shot_k"], config["initial_lr"]) == (1, 3, 0.01)
    assert config["architecture"]["arch_kwargs"]["agg_heads"] == 2


def test_stock_configuration_is_not_replaced_without_force(nnunet_env, capsys):
    path = _plans_file(nnunet_env)
    original = path.read_bytes()
    plans = json.loads(original)
    plans["configurations"]["3d_stock"] = {"inherits_from": "3d_fullres"}  # like nnU-Net's own 2d / 3d_lowres
    path.write_text(json.dumps(plans))
    try:
        before = path.read_bytes()
        args = ["plans", "add", "-d", str(DATASET_ID), "--template", "dinov3_ffa", "--name", "3d_stock"]
        assert main(args) == 2
        assert "was not written by nnunet-fm" in capsys.readouterr().err and path.read_bytes() == before
        assert main([*args, "--force"]) == 0
        assert json.loads(path.read_text())["configurations"]["3d_stock"]["nnunet_fm"]["template"] == "dinov3_ffa"
    finally:
        path.write_bytes(original)


def test_plans_file_keeps_its_mode_and_at_most_five_backups(nnunet_env):
    path = _plans_file(nnunet_env)
    path.chmod(0o664)
    for _ in range(7):
        add_configuration(DATASET_ID, "dinov3_ffa", name="3d_mode")
    assert path.stat().st_mode & 0o777 == 0o664
    assert len(list(path.parent.glob("nnUNetPlans.json.*.bak"))) == 5


def test_concurrent_plans_add_loses_no_configuration(nnunet_env):
    import subprocess
    import sys

    names = [f"3d_parallel_{i}" for i in range(4)]
    code = "import sys; from nnunet_fm.cli import main; sys.exit(main(sys.argv[1:]))"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                code,
                "plans",
                "add",
                "-d",
                str(DATASET_ID),
                "--template",
                "dinov3_ffa",
                "--name",
                name,
            ]
        )
        for name in names
    ]
    assert [p.wait(timeout=300) for p in procs] == [0] * len(names)
    configurations = json.loads(_plans_file(nnunet_env).read_text())["configurations"]
    assert set(names) <= set(configurations)


def test_plans_show_prints_effective_values_and_sources(nnunet_env, capsys):
    add = ["plans", "add", "-d", str(DATASET_ID), "--template", "dinov3_cube", "--name", "3d_show"]
    assert main([*add, "--set", "few_shot_k=2", "head_width=32"]) == 0
    capsys.readouterr()
    assert main(["plans", "show", "-d", str(DATASET_ID), "-c", "3d_show"]) == 0
    out = capsys.readouterr().out
    assert "few_shot_k = 2  [plans (--set)]" in out and "head_width = 32  [plans (--set)]" in out
    assert "separate_arms = true  [plans (template dinov3_cube)]" in out
    assert "two_pass = true  [nnUNetTrainerDINOv3Cube default]" in out
    assert "initial_lr = 0.001  [nnUNetTrainerDINOv3Cube default]" in out
    assert "agg_heads" not in out  # an FFA key: not read here
    assert main(["plans", "show", "-d", str(DATASET_ID), "-c", "nope"]) == 2


def test_whole_slice_geometry_fits_the_median_slice_into_inplane_size():
    from nnunet_fm.preprocessing_plan import preprocessing_entries, whole_slice_geometry

    parent = {
        "spacing": [0.6, 0.4, 0.4],
        "median_image_size_in_voxels": [180, 512, 500],
        "normalization_schemes": ["CTNormalization"],
    }
    spacing, patch = whole_slice_geometry(parent, 336, 64)
    assert spacing[0] == 0.6 and spacing[1] == spacing[2] == pytest.approx(512 * 0.4 / 336)
    assert patch == [64, 336, 336]
    assert whole_slice_geometry({**parent, "median_image_size_in_voxels": [40, 512, 500]}, 336, 64)[1][0] == 40
    entries, _ = preprocessing_entries(parent, "nnUNetPlans", "3d_fullres", "affine", 336, 64)
    assert entries["data_identifier"] == "nnUNetPlans_3d_fullres_fm_zscore_inplane336"
    assert entries["normalization_schemes"] == ["ZScoreNormalization"] and entries["use_mask_for_norm"] == [False]
    assert preprocessing_entries(parent, "nnUNetPlans", "3d_fullres", "parent", None, 64) == ({}, None)


def test_cube_template_patch_covers_the_median_image(nnunet_env):
    result = add_configuration(DATASET_ID, "dinov3_cube", name="3d_cube_global", overrides={"cube_size": [8, 16, 16]})
    assert result.patch_size == [16, 48, 48]  # the fixture's median image, whole cubes of 8x16x16
    result = add_configuration(DATASET_ID, "dinov3_cube", name="3d_cube_global", overrides={"cube_size": [5, 32, 32]})
    assert result.patch_size == [20, 64, 64]  # rounded up: one window still covers a median case


def test_cube_global_mode_predicts_a_median_case_in_one_window_and_patch_mode_stays_selectable(nnunet_env):
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    median = [16, 48, 48]  # the fixture's median image
    glob = add_configuration(DATASET_ID, "dinov3_cube", name="3d_cube_global", overrides={"cube_size": [8, 16, 16]})
    steps = compute_steps_for_sliding_window(median, glob.patch_size, 0.5)
    assert [len(s) for s in steps] == [1, 1, 1]  # one window: cube positions are positions in the volume
    local = add_configuration(
        DATASET_ID,
        "dinov3_cube",
        name="3d_cube_patch",
        overrides={"cube_size": [8, 16, 16], "global_patch": False, "patch_size": [8, 32, 32]},
    )
    assert local.patch_size == [8, 32, 32]
    steps = compute_steps_for_sliding_window(median, local.patch_size, 0.5)
    assert np.prod([len(s) for s in steps]) > 1  # the previous behaviour: cubes tile a sliding patch


def test_structural_keys_are_listed_and_checked_like_options(monkeypatch):
    listing = describe_templates()
    assert 'intensity = "affine"  [template dinov3_ffa]' in listing
    assert "max_depth = 64  [plans add default]" in listing
    assert "batch_size = null  [plans add default]  # Batch size. null: the parent's." in listing
    assert load_template("dinov3_ffa").structural_values()["inplane_size"] == 336
    raw = registry.read_template("dinov3_ffa")
    monkeypatch.setattr(registry, "read_template", lambda name: {**raw, "max_depth": 0})
    with pytest.raises(UserInputError, match=r"max_depth=0 \(template dinov3_ffa\) is not valid"):
        load_template("dinov3_ffa")


def test_null_batch_size_and_batch_dice_keep_the_parents(nnunet_env):
    plans = json.loads(_plans_file(nnunet_env).read_text())
    parent = plans["configurations"]["3d_fullres"]
    template = load_template("dinov3_cube")
    assert build_configuration(plans, template, {})["batch_size"] == 2  # the template's
    config = build_configuration(plans, template, {"batch_size": None, "batch_dice": None})
    assert config["batch_size"] == parent["batch_size"] and "batch_dice" not in config


def test_slicing_summary_reports_the_effective_slice_axis():
    assert "patch axis 1 = raw image axis 0 (axial slices; transpose_forward [1, 0, 2])" in slicing_summary(
        [1, 0, 2], 1
    )
    assert "NOT the axial slices" in slicing_summary([1, 0, 2], 0)
    assert slicing_summary([1, 0, 2], None).startswith("slices: per-slice loss mask along patch axis 1 = raw image")
