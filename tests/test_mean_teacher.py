"""Mean Teacher hook and unlabelled cases (all-ignore label maps) with numbers."""

import dataclasses
import hashlib
import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from nnunet_fm.errors import UserInputError
from nnunet_fm.hooks.loss import SliceMaskedLoss
from nnunet_fm.hooks.mean_teacher import (
    MeanTeacherMixin,
    consistency_loss,
    ema_alpha,
    rampup_weight,
    teacher_view,
)
from nnunet_fm.hooks.mean_teacher_loader import MeanTeacherDataLoader, labelled_batch_size
from nnunet_fm.hooks.mean_teacher_weights import CHECKPOINT_KEY, switch_checkpoint_weights, switch_model_weights
from nnunet_fm.unlabelled import add_unlabelled

DATASET_ID = 951  # the planned_workspace fixture's dataset (tests/conftest.py)
IGNORE = 3


class _Base:
    """The trainer's side of the extension points the hook contributes to: its step strategy and after-step call."""

    def forward_backward(self, data, target):
        assert self.fm_mean_teacher_step_active(), "Mean Teacher must handle the step itself"
        return self.fm_mean_teacher_step(data, target)

    def train_step(self, batch):
        self.optimizer.zero_grad()
        loss = self.forward_backward(batch["data"], batch["target"])
        self.optimizer.step()
        self.fm_mean_teacher_after_step()
        return {"loss": loss.item()}


class _Trainer(MeanTeacherMixin, _Base):
    """The hook on a tiny 3D conv net, without nnU-Net around it."""

    def __init__(self, **options):
        torch.manual_seed(0)
        self.network = nn.Conv3d(1, 3, 1)
        self.options = {
            "ssl": "mean_teacher",
            "ema_decay": 0.9,
            "consistency_weight": 2.0,
            "consistency_rampup_epochs": 0,
            "consistency_noise": 0.0,
            "supervised_weight": 1.0,  # the plain step's scale, so steps compare with it directly
            **options,
        }
        self.loss = SliceMaskedLoss.dice_ce(None, IGNORE, 0.0, 0.0)
        self.label_manager = SimpleNamespace(ignore_label=IGNORE)
        self.optimizer = torch.optim.SGD(self.network.parameters(), lr=0.1)
        self.current_epoch = 0
        self.num_epochs = 10
        self._fm_teacher = {n: p.detach().clone() for n, p in self.network.named_parameters()}
        self._fm_ema_step = 0

    def fm_option(self, name):
        return self.options[name]

    def fm_autocast(self):
        return torch.autocast("cpu", enabled=False)

    def scale_loss(self, loss):
        return loss


def _batch(target_value=None):
    g = torch.Generator().manual_seed(1)
    data = torch.randn(2, 1, 4, 8, 8, generator=g)
    target = torch.randint(0, 3, (2, 1, 4, 8, 8), generator=g)
    if target_value is not None:
        target[:] = target_value
    return {"data": data, "target": target}


def test_ema_equals_the_formula_after_n_steps():
    trainer = _Trainer()
    expected = {n: t.clone() for n, t in trainer._fm_teacher.items()}
    for step in range(5):
        trainer.train_step(_batch())
        alpha = ema_alpha(step, 0.9)
        for n, p in trainer.network.named_parameters():
            expected[n] = alpha * expected[n] + (1 - alpha) * p.detach()
    assert ema_alpha(0, 0.9) == 0.0 and ema_alpha(4, 0.9) == pytest.approx(0.8) and ema_alpha(50, 0.9) == 0.9
    for n, t in trainer._fm_teacher.items():
        torch.testing.assert_close(t, expected[n])


def test_consistency_is_zero_for_identical_student_teacher_and_inputs():
    logits = torch.randn(2, 3, 4, 8, 8)
    assert consistency_loss(logits, logits.clone()).item() == 0.0
    trainer = _Trainer()  # teacher == student, noise 0: the loss is the supervised loss alone
    batch = _batch()
    with torch.no_grad():
        supervised = trainer.loss(trainer.network(batch["data"]), batch["target"])
    assert trainer.forward_backward(batch["data"], batch["target"]).item() == pytest.approx(supervised.item())


def test_supervised_term_is_weighted_as_in_ssl4mis():
    """SSL4MIS train_mean_teacher_3D.py l. 154: supervised_loss = 0.5 * (loss_dice + loss_ce); 0.5 is the default."""
    assert {o.name: o.default for o in MeanTeacherMixin.fm_options}["supervised_weight"] == 0.5
    batch = _batch()
    full, half = _Trainer(consistency_weight=0.0), _Trainer(consistency_weight=0.0, supervised_weight=0.5)
    loss_full = full.forward_backward(batch["data"], batch["target"])
    loss_half = half.forward_backward(batch["data"], batch["target"])
    assert loss_half.item() == pytest.approx(0.5 * loss_full.item())
    for p_full, p_half in zip(full.network.parameters(), half.network.parameters()):
        torch.testing.assert_close(p_half.grad, 0.5 * p_full.grad)


def test_without_consistency_a_step_equals_the_plain_step_for_any_teacher():
    """The teacher pass swaps weights in and out of the same Parameters; the student's gradients must not notice."""
    trainer = _Trainer(consistency_weight=0.0, consistency_noise=0.1)
    trainer.network = nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.InstanceNorm3d(4, affine=True), nn.Conv3d(4, 3, 1)
    )
    trainer._fm_teacher = {n: p.detach() + 0.3 for n, p in trainer.network.named_parameters()}
    batch = _batch()
    trainer.loss(trainer.network(batch["data"]), batch["target"]).backward()
    plain = {n: p.grad.clone() for n, p in trainer.network.named_parameters()}
    trainer.network.zero_grad()
    trainer.forward_backward(batch["data"], batch["target"])
    for n, p in trainer.network.named_parameters():
        torch.testing.assert_close(p.grad, plain[n], rtol=0, atol=0)


def test_supervised_loss_covers_the_labelled_patches_only():
    """nnU-Net's per-sample Dice scores an all-ignore patch as 1: in the batch it would halve the labelled gradient."""
    trainer = _Trainer(consistency_weight=0.0)
    batch = _batch()
    mixed = torch.cat([batch["target"][:1], torch.full_like(batch["target"][:1], IGNORE)])
    logits = trainer.network(batch["data"])
    alone = trainer.loss(logits[:1], batch["target"][:1])
    assert trainer.fm_supervised_loss(logits, mixed).item() == pytest.approx(alone.item())
    assert trainer.loss(logits, mixed).item() != pytest.approx(alone.item())  # what the plain loss would give
    nothing = trainer.fm_supervised_loss(logits, torch.full_like(mixed, IGNORE))
    assert nothing.item() == 0.0 and nothing.requires_grad
    # by case when the loader names the cases: an unlabelled patch with background at augmented borders is still out
    bordered = mixed.clone()
    bordered[1, :, :, :, 0] = 0
    trainer._fm_unlabelled_cache = {"lab": False, "unl": True}
    trainer._fm_batch_keys = ["lab", "unl"]
    assert trainer.fm_supervised_loss(logits, bordered).item() == pytest.approx(alone.item())
    trainer._fm_batch_keys = None
    assert trainer.fm_supervised_loss(logits, bordered).item() != pytest.approx(alone.item())  # voxel test fooled


def test_all_ignore_cases_train_only_through_consistency():
    trainer = _Trainer(consistency_noise=0.5)
    batch = _batch(target_value=IGNORE)
    supervised = trainer.loss(trainer.network(batch["data"]), batch["target"])
    supervised.backward()
    assert supervised.item() == 0.0 and all(p.grad.abs().max() == 0 for p in trainer.network.parameters())
    trainer.network.zero_grad()
    loss = trainer.forward_backward(batch["data"], batch["target"])
    assert loss.item() > 0 and any(p.grad.abs().max() > 0 for p in trainer.network.parameters())


def test_teacher_view_adds_clipped_noise_and_the_student_sees_the_clean_patch():
    data = torch.zeros(2, 1, 16, 32, 32)
    noisy = teacher_view(data, 0.1)
    assert noisy.abs().max().item() == pytest.approx(0.2)  # clipped at 2 std, and some draws reach the clip
    assert 0.08 < noisy.std().item() < 0.1
    assert teacher_view(data, 0.0) is data
    trainer = _Trainer(consistency_noise=0.1)
    seen = []
    trainer.network.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    batch = _batch()
    trainer.forward_backward(batch["data"], batch["target"])
    assert torch.equal(seen[0], batch["data"]) and not torch.equal(seen[1], batch["data"])


def test_teacher_pass_uses_the_teacher_weights_under_autocast():
    """Autocast caches bf16/fp16 copies of parameters per region; the teacher pass must not get the student's."""
    trainer = _Trainer()
    trainer.fm_autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    trainer._fm_teacher = {n: t + 0.5 for n, t in trainer._fm_teacher.items()}
    outputs = []
    trainer.network.register_forward_hook(lambda module, args, out: outputs.append(out.detach().float()))
    batch = _batch()
    trainer.forward_backward(batch["data"], batch["target"])
    with torch.no_grad(), trainer.fm_teacher_weights(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = trainer.network(batch["data"]).float()
    assert not torch.equal(outputs[0], outputs[1])
    torch.testing.assert_close(outputs[1], expected)


def test_rampup():
    assert rampup_weight(0, 2.0, 10) == pytest.approx(2.0 * math.exp(-5))
    assert rampup_weight(10, 2.0, 10) == 2.0 and rampup_weight(3, 2.0, 0) == 2.0
    trainer = _Trainer(consistency_rampup_epochs=None)  # null: the ramp spans the whole run (num_epochs = 10)
    trainer.current_epoch = 5
    assert trainer.fm_consistency_weight() == pytest.approx(2.0 * math.exp(-5 * 0.5**2))


def _loader(cls, batch_size, oversample, **kwargs):
    data = SimpleNamespace(identifiers=[f"l{i}" for i in range(3)] + [f"u{i}" for i in range(7)])
    labels = SimpleNamespace(all_labels=[0, 1, 2], has_ignore_label=True)
    return cls(data, batch_size, (4, 8, 8), (4, 8, 8), labels, oversample_foreground_percent=oversample, **kwargs)


@pytest.mark.parametrize("oversample", [0.33, 0.5, 1.0])
def test_batches_hold_exactly_the_unlabelled_share_and_oversample_the_labelled_part_as_nnunet(oversample):
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

    labelled, unlabelled = [f"l{i}" for i in range(3)], [f"u{i}" for i in range(7)]
    assert labelled_batch_size(2, 0.5, on_top=True) == 2 and labelled_batch_size(4, 0.25, on_top=False) == 3
    assert labelled_batch_size(2, 1.0, on_top=True) == 0
    loader = _loader(
        MeanTeacherDataLoader, 4, oversample, labelled=labelled, unlabelled=unlabelled, labelled_batch_size=2
    )
    np.random.seed(0)
    draws = [loader.get_indices() for _ in range(500)]
    assert all([k[0] for k in keys] == ["u", "u", "l", "l"] for keys in draws)  # never binomial
    assert {k for keys in draws for k in keys} == set(labelled + unlabelled)
    stock_at_labelled_batch = _loader(nnUNetDataLoader, 2, oversample)
    flags = [loader.get_do_oversample(j) for j in range(4)]
    assert flags == [False, False] + [stock_at_labelled_batch.get_do_oversample(j) for j in range(2)]
    assert sum(flags) >= 1  # the forced-foreground slot always holds a labelled patch
    probabilistic = _loader(
        MeanTeacherDataLoader,
        4,
        oversample,
        labelled=labelled,
        unlabelled=unlabelled,
        labelled_batch_size=2,
        probabilistic_oversampling=True,
    )
    assert not any(probabilistic.get_do_oversample(j) for _ in range(200) for j in range(2))
    # no unlabelled cases: every slot labelled, oversampled as stock nnU-Net does
    plain = _loader(MeanTeacherDataLoader, 2, oversample, labelled=labelled, unlabelled=[], labelled_batch_size=1)
    assert (plain.unlabelled_batch_size, plain.labelled_batch_size) == (0, 2)
    assert [plain.get_do_oversample(j) for j in range(2)] == [
        stock_at_labelled_batch.get_do_oversample(j) for j in range(2)
    ]


def _digest(folder):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def raw_copy(nnunet_env, tmp_path):
    """A copy of the fixture's raw dataset and an unlabelled folder made from its test images."""
    folder = tmp_path / "Dataset778_Semi"
    shutil.copytree(nnunet_env.dataset_folder(DATASET_ID), folder)
    images = tmp_path / "unlabelled"
    images.mkdir()
    for i, path in enumerate(sorted((folder / "imagesTs").glob("*_0000.nii.gz"))):
        shutil.copy(path, images / f"unl_{i:03d}_0000.nii.gz")
    return folder, images


def test_add_unlabelled_writes_all_ignore_labels_and_records_them(raw_copy):
    folder, images = raw_copy
    before = json.loads((folder / "dataset.json").read_text())
    cases = add_unlabelled(folder, images)
    assert cases == ["unl_000", "unl_001"]
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["labels"]["ignore"] == IGNORE and meta["numTraining"] == before["numTraining"] + 2
    for case in cases:
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / f"{case}.nii.gz")))
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "imagesTr" / f"{case}_0000.nii.gz")))
        assert label.shape == image.shape and (label == IGNORE).all()
    record = json.loads((folder / "fm_cases.json").read_text())
    assert record["unlabelled"] == cases and len(record["labelled"]) == before["numTraining"]
    assert not list(folder.glob(".add_unlabelled.*"))


@pytest.mark.parametrize("defect", ["extra_channel", "wrong_ending", "clash"])
def test_add_unlabelled_refuses_a_mismatched_folder_and_changes_nothing(raw_copy, defect):
    folder, images = raw_copy
    if defect == "extra_channel":
        shutil.copy(images / "unl_000_0000.nii.gz", images / "unl_000_0001.nii.gz")
    elif defect == "wrong_ending":
        (images / "unl_000_0000.nii.gz").rename(images / "unl_000_0000.nrrd")
    else:
        add_unlabelled(folder, images)
    before = _digest(folder)
    with pytest.raises(UserInputError, match=r"channel file\(s\) .* beyond the 1 channel|file ending|already exist"):
        add_unlabelled(folder, images)
    assert _digest(folder) == before


def _data_loader(augmenter):
    """The loader inside nnU-Net's single- or multi-process augmenter."""
    return getattr(augmenter, "generator", None) or augmenter.data_loader


def _fm_unet_trainer(nnunet_env, name: str, settings: dict):
    """nnUNetTrainerUNetFewShot on the fixture's dataset for a new configuration ``name`` with ``settings`` (fold 0)."""
    from nnunet_fm.ext_trainers.nnunet_fm_trainers import nnUNetTrainerUNetFewShot
    from nnunet_fm.plans import add_configuration

    add_configuration(DATASET_ID, "unet_fewshot", name=name, overrides=settings)
    folder = nnunet_env.preprocessed / nnunet_env.dataset_folder(DATASET_ID).name
    plans = {**json.loads((folder / "nnUNetPlans.json").read_text()), "continue_training": False}
    dataset_json = json.loads((folder / "dataset.json").read_text())
    return nnUNetTrainerUNetFewShot(plans, name, 0, dataset_json, torch.device("cpu"))


def _loaded(trainer, network_weights: dict, expected: dict) -> set:
    """Trainable parameter names whose value after ``load_state_dict(network_weights)`` equals ``expected``."""
    trainer.network.load_state_dict(network_weights)
    return {n for n, p in trainer._fm_trainable().items() if torch.equal(p.detach(), expected[n])}


def test_checkpoint_round_trip_restores_student_and_teacher(nnunet_env, tmp_path):
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as nnunet_trainer_module

    settings = {
        "ssl": "mean_teacher",
        "num_epochs": 1,
        "num_iterations_per_epoch": 1,
        "num_val_iterations_per_epoch": 1,
        "few_shot_k": 3,
        "predict_with": "teacher",  # the default (student) is checked below
    }
    trainer = _fm_unet_trainer(nnunet_env, "3d_mt_ckpt", settings)
    trainer.on_train_start()
    try:
        # unlabelled_on_top with no unlabelled case: nothing goes on top, the plans' batch stays
        assert trainer.batch_size == trainer.configuration_manager.batch_size
        loader = _data_loader(trainer.dataloader_train)
        assert isinstance(loader, MeanTeacherDataLoader) and loader.unlabelled_batch_size == 0
        assert type(_data_loader(trainer.dataloader_val)) is nnUNetDataLoader  # validation stays stock
        assert nnunet_trainer_module.nnUNetDataLoader is nnUNetDataLoader  # the override ended with the call
        for _ in range(2):
            trainer.train_step(next(trainer.dataloader_train))
        student = {n: p.detach().clone() for n, p in trainer._fm_trainable().items()}
        teacher = {n: t.clone() for n, t in trainer._fm_teacher.items()}
        assert any(not torch.equal(student[n], teacher[n]) for n in student)
        path = tmp_path / "checkpoint.pth"
        trainer.save_checkpoint(str(path))
        saved = torch.load(path, weights_only=False)
        for n, t in teacher.items():  # nnUNetv2_predict loads the teacher
            assert torch.equal(saved["network_weights"][n], t)
        assert saved[CHECKPOINT_KEY]["ema_step"] == 2
        with torch.no_grad():
            for p in trainer._fm_trainable().values():
                p.add_(1.0)
        trainer._fm_teacher = {n: t + 1 for n, t in teacher.items()}
        trainer.load_checkpoint(str(path))
        for n, p in trainer._fm_trainable().items():
            assert torch.equal(p.detach(), student[n]) and torch.equal(trainer._fm_teacher[n], teacher[n])
        assert trainer._fm_ema_step == 2
        default = MeanTeacherMixin.fm_options[-1]
        assert default.name == "predict_with" and default.default == "student"
        trainer._fm_options["predict_with"] = dataclasses.replace(trainer._fm_options["predict_with"], value="student")
        trainer.save_checkpoint(str(tmp_path / "student.pth"))
        as_student = torch.load(tmp_path / "student.pth", weights_only=False)
        assert as_student[CHECKPOINT_KEY]["network_weights_are"] == "student"
        assert _loaded(trainer, as_student["network_weights"], student) == student.keys()
        other = as_student["network_weights"] | as_student[CHECKPOINT_KEY]["other_trainable"]
        assert _loaded(trainer, other, teacher) == teacher.keys()
        trainer.load_checkpoint(str(path))
        # nnunet-fm predict-with student / teacher: swaps the sets in place, nothing lost
        original = path.read_bytes()
        fold = tmp_path / "model" / "fold_0"
        fold.mkdir(parents=True)
        (fold / "checkpoint_final.pth").write_bytes(original)
        assert switch_model_weights(tmp_path / "model", ["0"], "student") == [fold / "checkpoint_final.pth"]
        swapped = torch.load(fold / "checkpoint_final.pth", weights_only=False)
        for n, t in student.items():
            assert torch.equal(swapped["network_weights"][n], t)
            assert torch.equal(swapped[CHECKPOINT_KEY]["other_trainable"][n], teacher[n])
        # nnU-Net's U-Net names an encoder convolution under 4 keys; loading must give the student everywhere
        assert len(swapped["network_weights"]) > len(student)
        assert _loaded(trainer, swapped["network_weights"], student) == student.keys()
        (fold / "checkpoint_final.pth").write_bytes(original)
        switch_checkpoint_weights(fold / "checkpoint_final.pth", "student")
        assert not switch_checkpoint_weights(fold / "checkpoint_final.pth", "student")  # already the student's
        assert switch_checkpoint_weights(fold / "checkpoint_final.pth", "teacher")
        back = torch.load(fold / "checkpoint_final.pth", weights_only=False)
        for n, t in saved["network_weights"].items():
            assert torch.equal(back["network_weights"][n], t)
        plain = tmp_path / "plain" / "fold_0"
        plain.mkdir(parents=True)
        torch.save({"network_weights": {}}, plain / "checkpoint_final.pth")
        with pytest.raises(UserInputError, match="not trained with ssl=mean_teacher"):
            switch_model_weights(tmp_path / "plain", ["0"], "student")
        with pytest.raises(UserInputError, match="No checkpoint in"):
            switch_model_weights(tmp_path / "model", ["3"], "student")
    finally:
        trainer.dataloader_train = trainer.dataloader_val = None


def test_without_consistency_a_real_step_with_unlabelled_rows_equals_the_plain_step_on_the_labelled_rows(nnunet_env):
    """nnU-Net's U-Net (instance norm) and loss, a batch of 2 unlabelled + 2 labelled patches, a teacher that
    differs from the student: with consistency_weight 0 the step's gradient is the plain step's on the labelled
    rows, bit for bit. Rules out the weight swap and the 4-row forward as a cost of Mean Teacher (BENCHMARKS.md).
    One intra-op thread: with several, CPU convolutions split 4 and 2 rows differently and round differently."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _step_with_and_without_unlabelled_rows(nnunet_env)
    finally:
        torch.set_num_threads(threads)


def _step_with_and_without_unlabelled_rows(nnunet_env):
    settings = {"ssl": "mean_teacher", "consistency_weight": 0.0, "supervised_weight": 1.0, "few_shot_k": None}
    trainer = _fm_unet_trainer(nnunet_env, "3d_mt_step", settings)
    trainer.initialize()
    torch.manual_seed(0)
    trainer._fm_teacher = {n: p.detach() + 0.1 * torch.randn_like(p) for n, p in trainer._fm_trainable().items()}
    shape = (4, 1, *trainer.configuration_manager.patch_size)
    data = torch.randn(shape)
    target = torch.randint(0, 3, shape).float()
    target[:2] = IGNORE
    trainer._fm_unlabelled_cache = {"ul_a": True, "ul_b": True, "case_a": False, "case_b": False}
    trainer._fm_batch_keys = ["ul_a", "ul_b", "case_a", "case_b"]
    trainer.forward_backward(data, target)
    step = {n: p.grad.clone() for n, p in trainer.network.named_parameters() if p.grad is not None}
    trainer.network.zero_grad(set_to_none=True)
    trainer.loss(trainer.network(data[2:]), target[2:]).backward()
    plain = {n: p.grad for n, p in trainer.network.named_parameters() if p.grad is not None}
    assert step.keys() == plain.keys() and len(plain) > 10
    for n, g in plain.items():
        torch.testing.assert_close(step[n], g, rtol=0, atol=0)
    teacher = {n: t.clone() for n, t in trainer._fm_teacher.items()}
    trainer.forward_backward(data, target)  # the teacher pass leaves the student's and the teacher's tensors alone
    for n, p in trainer._fm_trainable().items():
        assert torch.equal(trainer._fm_teacher[n], teacher[n]) and not torch.equal(p.detach(), teacher[n])


@pytest.mark.e2e
@pytest.mark.slow
def test_mean_teacher_through_stock_commands_on_a_dataset_with_unlabelled_cases(planned_workspace, tmp_path):
    from nnunet_fm.demo import add_plans
    from nnunet_fm.nnunet_commands import Workspace, plan_and_preprocess, predict

    ws = Workspace(tmp_path / "semi", extra_trainer_folders=planned_workspace.extra_trainer_folders)
    folder = ws.raw / "Dataset779_Semi"
    shutil.copytree(planned_workspace.dataset_folder(DATASET_ID), folder)
    images = tmp_path / "unlabelled"
    images.mkdir()
    for i, path in enumerate(sorted((folder / "imagesTs").glob("*_0000.nii.gz"))):
        shutil.copy(path, images / f"unl_{i:03d}_0000.nii.gz")
    output = ws.run("nnunet-fm", "add-unlabelled", "-d", "779", "-i", str(images))
    assert "Added 2 unlabelled case(s)" in output
    plan_and_preprocess(ws, 779)  # --verify_dataset_integrity accepts the all-ignore label maps
    settings = [
        "ssl=mean_teacher",
        "num_epochs=2",
        "num_iterations_per_epoch=2",
        "num_val_iterations_per_epoch=1",
        "unlabelled_fraction=0.5",
        "consistency_rampup_epochs=1",
    ]
    configuration = add_plans(ws, 779, "unet_fewshot", settings, name="3d_mt")
    ws.run(
        "nnUNetv2_train",
        "779",
        configuration,
        "all",
        "-tr",
        "nnUNetTrainerUNetFewShot",
        "-device",
        "cpu",
        extra_env={"nnUNet_n_proc_DA": "0"},
    )
    fold = ws.results / folder.name / f"nnUNetTrainerUNetFewShot__nnUNetPlans__{configuration}" / "fold_all"
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert "Mean Teacher: 5 labelled + 2 unlabelled training case(s); each batch of 4: 2 unlabelled + 2 labelled" in log
    checkpoint = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert (
        checkpoint[CHECKPOINT_KEY]["network_weights_are"] == "student" and checkpoint[CHECKPOINT_KEY]["ema_step"] == 4
    )
    out = predict(ws, 779, configuration, "nnUNetTrainerUNetFewShot", "all", tmp_path / "predictions")
    predictions = sorted(out.glob("*.nii.gz"))
    assert len(predictions) == 2
    assert all(set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(p))))) <= {0, 1, 2} for p in predictions)


def test_gradient_norms_measure_the_two_terms_of_the_step():
    from nnunet_fm.tools.mt_gradients import gradient_norms

    trainer = _Trainer(consistency_noise=0.0)
    batch = _batch()
    plain = torch.autograd.grad(
        trainer.loss(trainer.network(batch["data"]), batch["target"]), trainer.network.parameters()
    )
    supervised, consistency = gradient_norms(trainer, batch, 1.0)
    assert supervised == pytest.approx(float(torch.sqrt(sum((g**2).sum() for g in plain))), rel=1e-5)
    assert consistency == 0.0  # teacher == student, same input: the softmax maps agree exactly
    trainer._fm_teacher = {n: t + 0.5 for n, t in trainer._fm_teacher.items()}
    _, pulled = gradient_norms(trainer, batch, 1.0)
    _, half = gradient_norms(trainer, batch, 0.5)
    assert pulled > 0 and half == pytest.approx(pulled / 2, rel=1e-5)


def test_class_shares_count_the_labelled_patches_only():
    from nnunet_fm.tools.mt_gradients import class_shares

    target = torch.zeros(2, 1, 2, 2, 2, dtype=torch.int16)
    target[0, 0, 0] = 2  # labelled patch: 4 of 8 voxels vein
    target[1] = IGNORE  # the unlabelled case's patch
    batches = iter([{"target": target, "keys": ["case_a", "ul_b"]}] * 3)
    shares = class_shares(batches, 3, [0, 1, 2, IGNORE], unlabelled={"ul_b"})
    assert shares == {0: 0.5, 1: 0.0, 2: 0.5, IGNORE: 0.0}
