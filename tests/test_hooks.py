"""Trainer hooks, checked with numbers: class weights, prior bias, slice masking, few-shot, schedule, filter."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from nnunet_fm.errors import UserInputError
from nnunet_fm.file_names import FEWSHOT_RECORD_NAME as RECORD_NAME
from nnunet_fm.hooks.class_balance import class_weights
from nnunet_fm.hooks.class_counts import class_frequencies, label_counts
from nnunet_fm.hooks.few_shot import FewShotMixin, choose_cases
from nnunet_fm.hooks.loss import SliceMaskedLoss
from nnunet_fm.hooks.optim import warmup_cosine_lr
from nnunet_fm.hooks.patch_filter import ForegroundFilteredBatches, foreground_fraction
from nnunet_fm.hooks.prior_bias import set_prior_bias
from nnunet_fm.network_interfaces import output_heads


def test_mfb_weights_for_known_histogram():
    counts = np.array([900, 90, 10])
    # f = [0.9, 0.09, 0.01], median 0.09 -> w = [0.1, 1, 9]; background replaced by bg_weight
    np.testing.assert_allclose(class_weights(counts, bg_weight=0.05, use_mfb=True), [0.05, 1.0, 9.0])
    np.testing.assert_allclose(class_weights(counts, bg_weight=0.05, use_mfb=False), [0.05, 1.0, 1.0])


def test_absent_class_keeps_weights_and_priors_finite():
    counts = np.array([1000, 0, 24])
    weights = class_weights(counts, 0.05, True)
    assert np.all(np.isfinite(weights)) and weights[1] > weights[2]
    assert np.all(np.isfinite(np.log(class_frequencies(counts))))


def test_label_counts_skip_ignore_and_padding():
    seg = np.array([[0, 1, 1, 2, 3, -1, 3]])
    np.testing.assert_array_equal(label_counts([seg], num_classes=3, ignore_label=3), [1, 2, 1])


class _TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv3d(4, 3, 1), nn.Conv2d(4, 3, 1)

    def output_heads(self):
        return [self.a, self.b]


def test_prior_bias_equals_log_frequency():
    net = _TwoHeads()
    counts = np.array([800, 150, 50])
    set_prior_bias(output_heads(net), counts)
    expected = torch.log(torch.tensor([0.8, 0.15, 0.05]))
    for head in (net.a, net.b):
        torch.testing.assert_close(head.bias.data, expected)


def test_prior_bias_rejects_head_with_wrong_size():
    with pytest.raises(ValueError, match="bias"):
        set_prior_bias([nn.Conv3d(2, 2, 1)], np.array([1, 2, 3]))


def _masked_loss(threshold, ignore_label=None):
    return SliceMaskedLoss.dice_ce(torch.tensor([0.05, 1.0, 2.0]), ignore_label, threshold, 20.0)


def test_masked_slices_give_zero_gradient():
    torch.manual_seed(0)
    target = torch.zeros(1, 1, 3, 8, 8, dtype=torch.int16)
    target[0, 0, 1, 2:6, 2:6] = 1  # slice 1: 25% foreground
    target[0, 0, 2, 0, 0] = 2  # slice 2: 1/64 foreground, below a 5% threshold
    logits = torch.randn(1, 3, 3, 8, 8, requires_grad=True)
    _masked_loss(0.05)(logits, target).backward()
    per_slice = logits.grad.abs().sum(dim=(0, 1, 3, 4))
    assert per_slice[0] == 0 and per_slice[2] == 0 and per_slice[1] > 0


def test_unmasked_loss_uses_every_slice_and_all_masked_is_zero():
    target = torch.zeros(2, 1, 2, 4, 4, dtype=torch.int16)
    logits = torch.randn(2, 3, 2, 4, 4, requires_grad=True)
    _masked_loss(0.0)(logits, target).backward()
    assert (logits.grad.abs().sum(dim=(0, 1, 3, 4)) > 0).all()
    logits.grad = None
    loss = _masked_loss(0.5)(logits, target)  # no slice has foreground: nothing supervised
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


def test_ignore_label_voxels_get_no_gradient():
    target = torch.ones(1, 1, 1, 4, 4, dtype=torch.int16)
    target[..., :2] = 4  # dataset ignore label
    logits = torch.randn(1, 3, 1, 4, 4, requires_grad=True)
    _masked_loss(0.0, ignore_label=4)(logits, target).backward()
    assert torch.count_nonzero(logits.grad[..., :2]) == 0 and torch.count_nonzero(logits.grad[..., 2:]) > 0


def test_choose_cases_is_deterministic_and_a_subset():
    cases = [f"c{i}" for i in range(10)]
    picked = choose_cases(cases, 3, seed=7)
    assert picked == choose_cases(list(reversed(cases)), 3, seed=7)
    assert len(picked) == 3 and set(picked) <= set(cases)
    assert choose_cases(cases, None, 0) == sorted(cases) and choose_cases(cases, 50, 0) == sorted(cases)


class _Split:
    def do_split(self):
        return list(self.tr), ["v0", "v1"]


class _FakeTrainer(FewShotMixin, _Split):
    local_rank, fold = 0, 0
    plans_manager = SimpleNamespace(dataset_name="Dataset601_PL")

    def __init__(self, folder, k, seed, tr):
        self.output_folder, self.tr, self.log = str(folder), tr, []
        self.options = {"few_shot_k": k, "few_shot_seed": seed, "drop_empty": False}

    def fm_option(self, name):
        return self.options[name]

    def print_to_log_file(self, *args, **kwargs):
        self.log.append(" ".join(str(a) for a in args))


def test_few_shot_subset_is_recorded_and_stable_across_resume(tmp_path):
    cases = [f"case{i}" for i in range(8)]
    first, val = _FakeTrainer(tmp_path, 3, 1, cases).do_split()
    assert val == ["v0", "v1"] and len(first) == 3
    record = json.loads((tmp_path / RECORD_NAME).read_text())
    assert record["cases"] == first and record["few_shot_k"] == 3
    # a resumed trainer (new instance, candidates in another order) re-uses the recorded cases
    again, _ = _FakeTrainer(tmp_path, 3, 1, list(reversed(cases))).do_split()
    assert again == first
    with pytest.raises(UserInputError, match="few_shot_k=3"):
        _FakeTrainer(tmp_path, 4, 1, cases).do_split()


def test_warmup_then_cosine_schedule():
    assert warmup_cosine_lr(0, 1.0, 4, 20) == pytest.approx(0.25)
    assert warmup_cosine_lr(3, 1.0, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine_lr(4, 1.0, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine_lr(12, 1.0, 4, 20) == pytest.approx(0.5)
    assert warmup_cosine_lr(20, 1.0, 4, 20) == pytest.approx(0.0, abs=1e-12)


def _batches(fractions):
    for step, fracs in enumerate(fractions):
        target = torch.zeros(len(fracs), 1, 10)
        for i, f in enumerate(fracs):
            target[i, 0, : int(f * 10)] = 1
        yield {"data": target.clone() + step, "target": target, "keys": [f"s{step}_{i}" for i in range(len(fracs))]}


def test_foreground_filter_redraws_low_samples_with_bounded_retries():
    batches = ForegroundFilteredBatches(_batches([[0.0, 0.5], [0.3, 0.0], [0.0, 0.0]]), 0.2, 5, None)
    batch = next(batches)
    np.testing.assert_allclose(foreground_fraction(batch["target"], None).numpy(), [0.3, 0.5])
    assert batch["keys"] == ["s1_0", "s0_1"] and batch["data"][0, 0, 0] == 2.0  # data moved with its label
    stubborn = ForegroundFilteredBatches(_batches([[0.0]] * 4), 0.2, 2, None)
    assert foreground_fraction(next(stubborn)["target"], None).item() == 0.0  # gives up after 2 retries


def test_compile_follows_nnunet_compile_when_set(monkeypatch):
    from nnunet_fm.hooks.network import PlansNetworkMixin

    class _Stock:
        def _do_i_compile(self):
            return "stock decision"

    class _Trainer(PlansNetworkMixin, _Stock):
        device = torch.device("cuda")

        def fm_option(self, name):
            return {"compile": True}[name]

    monkeypatch.delenv("nnUNet_compile", raising=False)
    assert _Trainer()._do_i_compile() is True
    _Trainer.device = torch.device("cpu")
    assert _Trainer()._do_i_compile() is False
    monkeypatch.setenv("nnUNet_compile", "f")
    assert _Trainer()._do_i_compile() == "stock decision"


def test_present_class_dice_averages_over_present_pairs_only():
    from nnunet_fm.hooks.loss import PresentClassSoftDiceLoss

    probs = torch.zeros(2, 3, 1, 2, 2)
    target = torch.zeros(2, 1, 1, 2, 2, dtype=torch.long)
    target[0, 0, 0, 0, 0] = 1  # sample 0: class 1 only; class 2 absent
    target[1, 0, 0, 0, :] = 2  # sample 1: class 2 only
    probs[:, 0] = 1.0
    probs[0, :, 0, 0, 0] = torch.tensor([0.0, 1.0, 0.0])  # sample 0 predicts its class-1 voxel perfectly
    probs[1, :, 0, 0, 0] = torch.tensor([0.0, 0.0, 1.0])  # sample 1 finds one of its two class-2 voxels
    probs[1, :, 0, 0, 1] = torch.tensor([1.0, 0.0, 0.0])
    loss = PresentClassSoftDiceLoss(smooth=0.0)(probs, target)
    # present pairs: (0, class 1) Dice 1, (1, class 2) Dice 2*1/(1+2) = 2/3; absent pairs ignored
    assert loss.item() == pytest.approx(-(1.0 + 2.0 / 3.0) / 2.0)
    # nnU-Net's Dice averages over all pairs, absent ones included (Dice 0 each with smooth 0)
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    stock = MemoryEfficientSoftDiceLoss(do_bg=False, smooth=0.0, ddp=False)(probs, target)
    assert stock.item() == pytest.approx(-(1.0 + 2.0 / 3.0) / 4.0)
