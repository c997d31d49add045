"""kill -9 during epoch 2, then `nnUNetv2_train ... --c`: same few-shot cases, same schedule position."""

import json
import os
import re
import signal
import subprocess
import time

import pytest

from nnunet_fm.demo import add_plans
from nnunet_fm.hooks.optim import warmup_cosine_lr
from nnunet_fm.nnunet_commands import _resolve

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
DATASET_ID = 951  # the planned_workspace fixture's dataset (tests/conftest.py)
TINY = [
    'encoder_kwargs={"embed_dim":32,"depth":2,"num_heads":2}',
    "taps=[0,1]",
    "encoder_weights=none",
    "vit_amp=false",
    "cube_size=[8,16,16]",
]
SCHEDULE = [
    "num_epochs=5",
    "num_iterations_per_epoch=2",
    "num_val_iterations_per_epoch=1",
    "save_every=1",
    "few_shot_k=3",
    "warmup_epochs=0",
    "initial_lr=0.01",
]


def _logged_lrs(fold) -> dict[int, float]:
    """Epoch -> learning rate, from every training log of the fold (nnU-Net logs both per epoch)."""
    lrs, epoch = {}, None
    for log in sorted(fold.glob("training_log_*.txt")):
        for line in log.read_text().splitlines():
            if m := re.search(r"Epoch (\d+)$", line.strip()):
                epoch = int(m.group(1))
            elif (m := re.search(r"Current learning rate: ([0-9.e-]+)", line)) and epoch is not None:
                lrs[epoch] = float(m.group(1))
    return lrs


def test_kill_during_epoch_two_then_continue(planned_workspace):
    ws = planned_workspace
    configuration = add_plans(ws, DATASET_ID, "dinov3_cube", [*TINY, *SCHEDULE], name="3d_resume")
    fold = ws.results / ws.dataset_folder(DATASET_ID).name / f"nnUNetTrainerDINOv3Cube__nnUNetPlans__{configuration}"
    fold = fold / "fold_0"
    command = [_resolve("nnUNetv2_train"), str(DATASET_ID), configuration, "0", "-tr", "nnUNetTrainerDINOv3Cube"]
    command += ["-device", "cpu"]
    env = {**ws.env(), "nnUNet_n_proc_DA": "0"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        logs = list(fold.glob("training_log_*.txt")) if fold.is_dir() else []
        if logs and "Epoch 2" in logs[0].read_text():
            break
        time.sleep(0.5)
    assert proc.poll() is None, "training ended before epoch 2 could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (fold / "checkpoint_latest.pth").is_file() and not (fold / "checkpoint_final.pth").exists()
    chosen = json.loads((fold / "fewshot_cases.json").read_text())["cases"]

    ws.run(*command, "--c", extra_env={"nnUNet_n_proc_DA": "0"})
    assert (fold / "checkpoint_final.pth").is_file()
    assert json.loads((fold / "fewshot_cases.json").read_text())["cases"] == chosen
    logs = "".join(p.read_text() for p in sorted(fold.glob("training_log_*.txt")))
    assert f"Few-shot cases re-used from {fold / 'fewshot_cases.json'}: {chosen}" in logs
    # every epoch's learning rate is the schedule's, before and after the kill: the resumed run continued the
    # warmup/cosine position instead of restarting it
    lrs = _logged_lrs(fold)
    assert set(lrs) == set(range(5))
    for epoch, lr in lrs.items():
        assert lr == pytest.approx(warmup_cosine_lr(epoch, 0.01, 0, 5), abs=1e-5)
