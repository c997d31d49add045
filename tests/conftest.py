"""Shared fixtures: a tiny nnU-Net workspace with a synthetic dataset, planned and preprocessed once."""

import os
from pathlib import Path

import pytest

from nnunet_fm.demo import prepare_dataset
from nnunet_fm.demo_data import DemoSpec
from nnunet_fm.nnunet_commands import Workspace

TEST_TRAINERS = str(Path(__file__).parent / "ext_trainers")
TINY_SPEC = DemoSpec(shape=(16, 48, 48), spacing=(1.5, 0.7, 0.7))
DATASET_ID = 951

# plans add / plans show estimate GPU memory by probing the network on the CPU (seconds to a minute per new
# configuration); tests that are not about it skip it, here and in the nnU-Net / nnunet-fm subprocesses they start.
# tests/test_memory_plan.py switches it back on.
os.environ.setdefault("NNUNET_FM_MEMORY_ESTIMATE", "off")


@pytest.fixture(scope="session")
def planned_workspace(tmp_path_factory) -> Workspace:
    """Demo dataset 951 (5 train, 2 test, 16x48x48) after stock nnUNetv2_plan_and_preprocess."""
    ws = Workspace(tmp_path_factory.mktemp("nnunet"), extra_trainer_folders=[TEST_TRAINERS])
    ws.log = ws.root / "commands.log"
    prepare_dataset(ws, DATASET_ID, num_train=5, num_test=2, spec=TINY_SPEC, seed=3)
    return ws


@pytest.fixture
def nnunet_env(planned_workspace, monkeypatch) -> Workspace:
    """The planned workspace with its nnU-Net env vars set in this process."""
    for key, value in planned_workspace.env().items():
        if key.startswith("nnUNet"):
            monkeypatch.setenv(key, value)
    return planned_workspace
