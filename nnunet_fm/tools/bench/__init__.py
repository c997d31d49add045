"""Benchmark the plugin's networks against the stock nnU-Net U-Net built from the same plans.

``python -m nnunet_fm.tools.bench --help``. One row per architecture, all built for the same patch, input
channels and classes: parameter counts (trainable / frozen), forward FLOPs per patch, the time and
peak memory of one training step (forward + backward + AdamW, nnU-Net's ``DC_and_CE_loss``) and,
optionally, the time of nnU-Net's sliding-window prediction (``nnUNetPredictor``) of a fixed random volume.
Times and memory are also given as a ratio to the stock nnU-Net row of the same run. ``--cube-sweep``
instead compares two-pass and ordinary training of the sub-cube network for 1, 2, 4 and 8 cubes per patch.

Encoder weights are random: timing and memory do not depend on weight values.

Modules: ``config`` (settings, result rows), ``probes`` (measurement primitives), ``models`` (the benchmarked
models, :data:`BENCH_MODELS`, and building each network), ``predict`` (nnU-Net's predictor), ``run`` (one row
per model), ``sweep`` (``--cube-sweep``), ``report`` (tables), ``cli`` (command line).
"""

from nnunet_fm.tools.bench.cli import config_from_args, main
from nnunet_fm.tools.bench.config import (
    DEFAULT_MODELS,
    DEFAULT_PATCH,
    DEFAULT_SPACING,
    LOSS_KWARGS,
    STOCK,
    SWEEP_CUBES,
    BenchConfig,
    BenchResult,
    Row,
    RowStatusError,
    SweepRow,
)
from nnunet_fm.tools.bench.models import (
    BENCH_MODELS,
    DEFAULT_ARCHITECTURE,
    MODELS,
    NETWORK_CLASSES,
    STOCK_TRAINER,
    TRAINERS,
    BenchModel,
    build_model,
    configuration,
    planner_architecture,
)
from nnunet_fm.tools.bench.predict import make_predictor, time_prediction
from nnunet_fm.tools.bench.probes import PeakRSS, forward_flops, machine_info, measure_memory, time_call
from nnunet_fm.tools.bench.report import RATIO_FIELDS, add_ratios, format_report, format_sweep
from nnunet_fm.tools.bench.run import make_train_step, measure_model, run_benchmark
from nnunet_fm.tools.bench.sweep import run_cube_sweep, split_cubes

__all__ = [
    "BENCH_MODELS",
    "DEFAULT_ARCHITECTURE",
    "DEFAULT_MODELS",
    "DEFAULT_PATCH",
    "DEFAULT_SPACING",
    "LOSS_KWARGS",
    "MODELS",
    "NETWORK_CLASSES",
    "RATIO_FIELDS",
    "STOCK",
    "STOCK_TRAINER",
    "SWEEP_CUBES",
    "TRAINERS",
    "BenchConfig",
    "BenchModel",
    "BenchResult",
    "PeakRSS",
    "Row",
    "RowStatusError",
    "SweepRow",
    "add_ratios",
    "build_model",
    "config_from_args",
    "configuration",
    "format_report",
    "format_sweep",
    "forward_flops",
    "machine_info",
    "main",
    "make_predictor",
    "make_train_step",
    "measure_memory",
    "measure_model",
    "planner_architecture",
    "run_benchmark",
    "run_cube_sweep",
    "split_cubes",
    "time_call",
    "time_prediction",
]
