"""Prediction time through nnU-Net's own inference path (``nnUNetPredictor``'s sliding window).

The predictor is set up in memory (``manual_initialization``, as nnU-Net's trainer does for its final
validation) with a one-configuration plans dict and a minimal dataset.json; it then predicts a random
``[C, D, H, W]`` volume with ``predict_sliding_window_return_logits``: 50% tile overlap, Gaussian weighting,
no mirroring, results kept on the device on CUDA, nnU-Net's own autocast (CUDA only).
"""

from __future__ import annotations

import contextlib
import io
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

from nnunet_fm.tools.bench.config import BenchConfig
from nnunet_fm.tools.bench.models import TRAINERS, configuration
from nnunet_fm.tools.bench.probes import sync

CONFIGURATION = "3d_bench"
TILE_STEP_SIZE = 0.5


def bench_plans(name: str, cfg: BenchConfig) -> dict[str, Any]:
    """A plans dict with one configuration: model ``name``'s patch and architecture."""
    return {
        "dataset_name": "Dataset000_Bench",
        "plans_name": "nnUNetPlans",
        "label_manager": "LabelManager",
        "configurations": {CONFIGURATION: configuration(name, cfg)},
    }


def bench_dataset_json(cfg: BenchConfig) -> dict[str, Any]:
    """A dataset.json with ``cfg.input_channels`` channels and ``cfg.num_classes`` labels (background first)."""
    return {
        "channel_names": {str(i): f"channel{i}" for i in range(cfg.input_channels)},
        "labels": {"background": 0, **{f"class{i}": i for i in range(1, cfg.num_classes)}},
        "numTraining": 0,
        "file_ending": ".nii.gz",
    }


def make_predictor(name: str, network: nn.Module, cfg: BenchConfig, device: torch.device) -> nnUNetPredictor:
    """An ``nnUNetPredictor`` for ``network`` (model ``name``), initialised in memory."""
    with contextlib.redirect_stdout(io.StringIO()):  # on CPU it prints that everything stays off the device
        predictor = nnUNetPredictor(
            tile_step_size=TILE_STEP_SIZE,
            use_gaussian=True,
            use_mirroring=False,
            perform_everything_on_device=device.type == "cuda",
            device=device,
            verbose=False,
            allow_tqdm=False,
        )
        plans_manager = PlansManager(bench_plans(name, cfg))
        predictor.manual_initialization(
            network,
            plans_manager,
            plans_manager.get_configuration(CONFIGURATION),
            parameters=[network.state_dict()],
            dataset_json=bench_dataset_json(cfg),
            trainer_name=TRAINERS[name],
            inference_allowed_mirroring_axes=None,
        )
    return predictor


@contextlib.contextmanager
def _keep_cudnn_benchmark() -> Iterator[None]:
    """Restore ``cudnn.benchmark`` afterwards: the predictor switches it on for the whole process."""
    before = torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def time_prediction(name: str, model: nn.Module, cfg: BenchConfig, device: torch.device) -> float:
    """Median seconds of ``predict_sliding_window_return_logits`` on a random ``cfg.predict_volume``.

    One warm-up call predicts a single tile (a patch-sized crop of the volume) first.
    """
    if cfg.predict_volume is None:
        raise ValueError("cfg.predict_volume is not set")
    g = torch.Generator().manual_seed(cfg.seed + 1)
    volume = torch.randn(cfg.input_channels, *cfg.predict_volume, generator=g)
    tile = volume[(slice(None), *(slice(0, p) for p in cfg.patch))]
    try:
        # stdout carries the table: nnU-Net's messages (e.g. its out-of-memory fallback) go to stderr
        with _keep_cudnn_benchmark(), contextlib.redirect_stdout(sys.stderr):
            predictor = make_predictor(name, model, cfg, device)
            predictor.predict_sliding_window_return_logits(tile)
            sync(device)
            times = []
            for _ in range(max(1, cfg.repeats)):
                t0 = time.perf_counter()
                predictor.predict_sliding_window_return_logits(volume)
                sync(device)
                times.append(time.perf_counter() - t0)
    finally:
        model.train()
    return statistics.median(times)
