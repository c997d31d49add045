"""DINOv2 (timm ``vit_small_patch14_dinov2``, patch 14) through the frozen-encoder interface: network, patch rule and
the stock nnU-Net commands end to end. Nothing DINOv2-specific exists in the plugin: only the plans name it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nnunet_fm.architectures.dinov3_cube import DINOv3Cube
from nnunet_fm.architectures.dinov3_ffa import DINOv3FFA
from nnunet_fm.demo import add_plans
from nnunet_fm.encoders import ENCODER_WEIGHTS_ENV_VAR, FrozenViTEncoder
from nnunet_fm.errors import UserInputError
from nnunet_fm.nnunet_commands import train_predict_evaluate
from nnunet_fm.plans import build_configuration
from nnunet_fm.templates import load_template, resolve_patch

DINOV2 = "vit_small_patch14_dinov2.lvd142m"
TINY_ENCODER = {"embed_dim": 32, "depth": 2, "num_heads": 2}
DATASET_ID = 951  # the planned_workspace fixture's dataset (tests/conftest.py)
SHORT = ["num_epochs=1", "num_iterations_per_epoch=2", "num_val_iterations_per_epoch=1", "few_shot_k=3"]
ENCODER_PATCH = {"multiple_of": ["encoder_patch"]}


def _net(**kwargs) -> DINOv3FFA:
    torch.manual_seed(0)
    return DINOv3FFA(1, 3, encoder=DINOV2, encoder_kwargs=TINY_ENCODER, taps=[0, 1, 1], agg_heads=2, **kwargs)


def test_dinov2_ffa_forward_backward_at_multiples_of_14() -> None:
    net = _net().train()
    assert net.encoder.patch_size == 14 and net.patch_size == 14
    x = torch.randn(2, 1, 3, 28, 42)
    y = net(x)
    assert y.shape == (2, 3, 3, 28, 42) and torch.isfinite(y).all()
    y.square().mean().backward()
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    assert trainable and all(not n.startswith("encoder.") for n, _ in trainable)
    assert [n for n, p in trainable if p.grad is None] == []
    # encoder input: per-slice min-max, normalised with the encoder's own mean/std
    z = torch.arange(3) / 3
    raw = net.encoder_images(x, z).view(2, 3, 3, 28, 42) * torch.tensor(net.encoder.std).view(3, 1, 1)
    raw = raw + torch.tensor(net.encoder.mean).view(3, 1, 1)
    s = x[0, 0, 1]
    torch.testing.assert_close(raw[0, 1, 0], (s - s.min()) / (s.max() - s.min()))
    with pytest.raises(ValueError, match=r"multiple of 14"):
        net(torch.randn(1, 1, 2, 32, 32))  # fine for DINOv3, not for patch 14


def test_encoder_patch_rule_snaps_to_the_encoders_patch() -> None:
    dinov2 = {"encoder": DINOV2, "encoder_kwargs": TINY_ENCODER}
    dinov3 = {"encoder": "vit_small_patch16_dinov3", "encoder_kwargs": None}
    assert resolve_patch(ENCODER_PATCH, [16, 48, 50], None, dinov2, user_given=False) == [16, 42, 56]
    assert resolve_patch(ENCODER_PATCH, [16, 48, 50], None, dinov3, user_given=False) == [16, 48, 48]
    assert resolve_patch(ENCODER_PATCH, [7, 336, 336], None, dinov2, user_given=True) == [7, 336, 336]  # 24 x 14
    with pytest.raises(UserInputError, match=r"Nearest valid patch: \[16, 42, 42\]"):
        resolve_patch(ENCODER_PATCH, [16, 48, 48], None, dinov2, user_given=True)
    with pytest.raises(UserInputError, match=r"encoder_patch.*vit_small_patch14_dinov3"):
        resolve_patch(ENCODER_PATCH, [16, 48, 48], None, {"encoder": "vit_small_patch14_dinov3"}, False)


def _plans(nnunet_env) -> dict:
    path = nnunet_env.preprocessed / nnunet_env.dataset_folder(DATASET_ID).name / "nnUNetPlans.json"
    return json.loads(path.read_text())


def test_whole_slice_view_must_hold_whole_encoder_patches(nnunet_env) -> None:
    """inplane_size is checked against the configured encoder's patch (14 here), not a fixed 16."""
    plans, template = _plans(nnunet_env), load_template("dinov3_ffa")
    dinov2 = {"encoder": DINOV2, "encoder_kwargs": TINY_ENCODER}
    config = build_configuration(plans, template, {**dinov2, "inplane_size": 42})
    assert config["patch_size"][1:] == [42, 42]
    with pytest.raises(UserInputError, match=r"inplane_size=48 is not a multiple of 14 .*--set inplane_size=42 or 56"):
        build_configuration(plans, template, {**dinov2, "inplane_size": 48})
    assert build_configuration(plans, template, {"inplane_size": 48})["patch_size"][1:] == [48, 48]  # DINOv3: 16
    with pytest.raises(UserInputError, match=r"inplane_size=42 is not a multiple of 16"):
        build_configuration(plans, template, {"inplane_size": 42})


def test_sub_cube_model_refuses_a_patch_14_encoder_when_planned(nnunet_env) -> None:
    """DINOv3Cube up-samples by x2 stages: a patch-14 encoder is refused by `plans add`, not by training."""
    with pytest.raises(UserInputError, match=r"power of 2; '.*dinov2.*' has patch size 14.*dinov3_ffa"):
        build_configuration(_plans(nnunet_env), load_template("dinov3_cube"), {"encoder": DINOV2})
    with pytest.raises(ValueError, match="power of 2"):
        DINOv3Cube(1, 3, [4, 28, 28], encoder=DINOV2, encoder_kwargs=TINY_ENCODER, taps=(0, 1))


def _meta_dinov2_checkpoint(path) -> dict[str, torch.Tensor]:
    """A tiny DINOv2 in Meta's layout (``mask_token`` beside timm's names), random non-trivial weights."""
    encoder = FrozenViTEncoder(DINOV2, taps=(0,), **TINY_ENCODER)
    g = torch.Generator().manual_seed(4)
    state = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in encoder.vit.state_dict().items()}
    torch.save({**state, "mask_token": torch.zeros(1, TINY_ENCODER["embed_dim"])}, path)
    return state


@pytest.mark.e2e
@pytest.mark.slow
def test_dinov2_ffa_trains_and_predicts_with_stock_commands(planned_workspace, tmp_path, monkeypatch):
    """`plans add --set encoder=<DINOv2>` -> nnUNetv2_train -> nnUNetv2_predict -> evaluate; the patch follows the
    encoder's patch (14), and the configuration's own encoder_weights win over the env var meant for others."""
    ws = planned_workspace
    weights = tmp_path / "dinov2_vits14_tiny.pth"
    state = _meta_dinov2_checkpoint(weights)
    monkeypatch.setenv(ENCODER_WEIGHTS_ENV_VAR, str(tmp_path / "dinov3_weights_for_other_configurations.pth"))
    settings = [
        *SHORT,
        f"encoder={DINOV2}",
        f"encoder_kwargs={json.dumps(TINY_ENCODER)}",
        "taps=[0,1,1]",
        f"encoder_weights={weights}",
        "vit_amp=false",
        "agg_heads=2",
        "inplane_size=null",  # the parent's 48x48 patch, snapped by the encoder_patch rule
    ]
    configuration = add_plans(ws, DATASET_ID, "dinov3_ffa", settings, name="3d_fm_dinov2_ffa")
    plans_file = ws.preprocessed / ws.dataset_folder(DATASET_ID).name / "nnUNetPlans.json"
    config = json.loads(plans_file.read_text())["configurations"][configuration]
    assert config["patch_size"] == [16, 42, 42]
    assert config["architecture"]["arch_kwargs"]["encoder"] == DINOV2

    scores = train_predict_evaluate(
        ws, DATASET_ID, configuration, "nnUNetTrainerDINOv3FFA", predict_args=("--disable_tta",)
    )
    assert set(scores["per_class_dice"]) == {"1", "2"}
    assert all(0.0 <= v <= 1.0 for v in scores["per_class_dice"].values())
    assert len(list(Path(scores["prediction"]).glob("*.nii.gz"))) == 2
    fold = ws.model_folder(DATASET_ID, "nnUNetTrainerDINOv3FFA", configuration) / "fold_0"
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert f"Frozen encoder weights (plans key encoder_weights): LoadReport(source='{weights}', format='meta'" in log
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    saved = checkpoint["network_weights"]
    for key in ("pos_embed", "blocks.1.attn.qkv.weight", "blocks.1.ls2.gamma"):
        assert torch.equal(saved[f"encoder.vit.{key}"], state[key]), key  # the file's weights, kept frozen
