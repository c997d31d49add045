"""Planned memory (nnunet_fm.memory_plan): the extrapolation, the geometry choice, and the estimate against a
measured step."""

from __future__ import annotations

import json

import pytest
import torch

from nnunet_fm.architectures.dinov3_ffa import DINOv3FFA
from nnunet_fm.memory_plan import MemoryProfile, choose_geometry, estimate, measure_profile
from nnunet_fm.tensor_memory import live_tensor_peak

MIB = 2**20
DATASET_ID = 951  # the planned_workspace fixture's dataset (tests/conftest.py)


def _profile(**kwargs) -> MemoryProfile:
    base = dict(
        depths=[1, 2],
        parameters=100 * MIB,
        trainable=10 * MIB,
        saved=[10 * MIB, 20 * MIB],
        live=[0, 0],
        forward=[150 * MIB, 170 * MIB],
        segments={"body": [101 * MIB, 201 * MIB], "head": [300 * MIB, 600 * MIB]},
        segment_kinds={"body": "depth", "head": "chunk"},
        area_scale=2.0,
        chunk_slices=1,
    )
    return MemoryProfile(**{**base, **kwargs})


def test_estimate_adds_the_parts_and_scales_per_slice_bytes_only() -> None:
    e = estimate(_profile(), batch_size=2, patch=(10, 32, 32))
    assert e.parameters == 100 * MIB and e.gradients == 40 * MIB and e.optimizer == 80 * MIB
    assert e.activations == 2 * 10 * MIB * 2 * 10  # 10 MiB a slice, x2 area, batch 2 x depth 10
    # body: 1 MiB intercept + 100 MiB a slice x2 area x depth 10 (one sample at a time); head: one 1-slice chunk
    logits = 3 * 4 * 2 * 2 * 10 * 32 * 32  # logits, log-softmax and their gradient: fp32, batch 2, 2 classes
    assert e.transient == int(1.25 * (1 * MIB + 2 * 100 * MIB * 10) + logits)
    assert e.prediction == 100 * MIB + 30 * MIB + 2 * 20 * MIB * 10
    assert e.training == sum((e.parameters, e.gradients, e.optimizer, e.activations, e.transient))
    shallow = estimate(_profile(), batch_size=1, patch=(1, 32, 32))
    assert shallow.transient == int(1.25 * 2 * 300 * MIB) + 3 * 4 * 2 * 32 * 32  # the chunk dominates at one slice
    assert "training" in e.summary() and "bf16 autocast" in e.summary()


def test_choose_geometry_prefers_depth_then_batch() -> None:
    profile = _profile()
    budget = estimate(profile, 1, (12, 32, 32)).training / 2**30 + 1e-6
    depth, batch, chosen = choose_geometry(profile, budget, batch_size=2, patch=(20, 32, 32))
    assert (depth, batch) == (12, 1)
    assert estimate(profile, 1, (13, 32, 32)).training > budget * 2**30
    roomy = estimate(profile, 2, (20, 32, 32)).training / 2**30
    assert choose_geometry(profile, roomy, 2, (20, 32, 32))[:2] == (20, 2)  # the recipe fits: kept
    assert choose_geometry(profile, 0.01, 2, (20, 32, 32)) is None


@pytest.mark.parametrize("batch, depth", [(2, 6)])
def test_estimate_bounds_a_measured_training_step(batch: int, depth: int) -> None:
    """Probed at 1-2 slices of 32x32 (area-scaled), the estimate of a 2 x 6 x 64 x 64 step holds the live-tensor
    peak counted at torch's dispatcher for it (parameters + gradients + activations; no optimizer state in a step),
    within 1.6x."""
    torch.manual_seed(0)
    net = DINOv3FFA(
        1,
        3,
        encoder_kwargs={"embed_dim": 32, "depth": 2, "num_heads": 2},
        taps=(0, 1, 1),
        agg_heads=2,
        hr_chunk_mib=4.0,
        adapter_drop_path=0.0,
        agg_drop_path=0.0,
    )
    profile = measure_profile(net, 1, 3, (64, 64), amp_dtype=None, probe_inplane=(32, 32))
    assert profile.area_scale == 4.0 and profile.chunk_slices == net.hr_head.chunk_slices((64, 64))
    e = estimate(profile, batch, (depth, 64, 64))
    x = torch.randn(batch, 1, depth, 64, 64)
    target = torch.randint(0, 3, (batch, depth, 64, 64))

    def step() -> None:
        torch.nn.functional.cross_entropy(net(x), target).backward()

    net.train()
    net.zero_grad(set_to_none=True)
    measured = live_tensor_peak(step, net)
    planned = e.training - e.optimizer
    assert measured <= planned <= 1.6 * measured, (measured / MIB, planned / MIB)


TINY_FFA = [
    'encoder_kwargs={"embed_dim":32,"depth":2,"num_heads":2}',
    "taps=[0,1,1]",
    "agg_heads=2",
    "encoder_weights=none",
    "inplane_size=48",
]


def test_plans_add_prints_fits_and_refuses_memory(nnunet_env, monkeypatch, capsys) -> None:
    """plans add prints the estimate; --gpu-memory keeps whole slices and shrinks the crop depth (then batch) to
    the budget; a budget not even one slice fits is refused with nothing written; plans show prints it too."""
    from nnunet_fm.cli import main
    from nnunet_fm.memory_plan import GIB, configuration_profile
    from nnunet_fm.plans import plans_path, read_plans

    monkeypatch.setenv("NNUNET_FM_MEMORY_ESTIMATE", "on")
    base = ["plans", "add", "-d", str(DATASET_ID), "--template", "dinov3_ffa", "--name", "3d_mem", "--set", *TINY_FFA]
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "estimated peak GPU memory" in out and "method:" in out
    path = plans_path(DATASET_ID)
    plans = read_plans(path)
    config = plans["configurations"]["3d_mem"]
    depth, batch = config["patch_size"][0], config["batch_size"]
    assert depth >= 8 and batch == 2 and config["patch_size"][1:] == [48, 48]
    meta = json.loads((path.parent / "dataset.json").read_text())
    profile, axis, _, _ = configuration_profile(plans, "3d_mem", config, meta, path.parent)
    target = config["patch_size"].copy()
    target[axis] = depth // 2
    budget = estimate(profile, 1, tuple(target), axis).training / GIB * 1.0001
    assert main([*base, "--gpu-memory", f"{budget:.6f}"]) == 0
    out = capsys.readouterr().out
    written = read_plans(path)["configurations"]["3d_mem"]
    assert written["patch_size"] == target and written["batch_size"] == 1  # depth first, then the batch
    assert f"crop depth {depth // 2} (was {depth})" in out
    before = path.read_bytes()
    assert main([*base, "--gpu-memory", "0.001"]) == 2
    assert "not even" in capsys.readouterr().err and path.read_bytes() == before
    assert main(["plans", "show", "-d", str(DATASET_ID), "-c", "3d_mem"]) == 0
    assert "estimated peak GPU memory" in capsys.readouterr().out
