"""Command line: ``python -m nnunet_fm.tools.bench --help``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nnunet_fm.tools.bench.config import DEFAULT_MODELS, DEFAULT_PATCH, BenchConfig
from nnunet_fm.tools.bench.models import MODELS
from nnunet_fm.tools.bench.report import format_report, format_sweep
from nnunet_fm.tools.bench.run import run_benchmark
from nnunet_fm.tools.bench.sweep import run_cube_sweep


def _read_plans(path: Path, configuration: str) -> tuple[dict[str, Any], list[int], int | None, int | None]:
    """Architecture block, patch, input channels and classes (the last two from a sibling dataset.json)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(str(path))
    conf = manager.get_configuration(configuration)
    arch = {
        "network_class_name": conf.network_arch_class_name,
        "arch_kwargs": dict(conf.network_arch_init_kwargs),
        "_kw_requires_import": list(conf.network_arch_init_kwargs_req_import),
    }
    channels = classes = None
    dataset_json = path.parent / "dataset.json"
    if dataset_json.is_file():
        ds = json.loads(dataset_json.read_text())
        channels = len(ds.get("channel_names", ds.get("modality", {}))) or None
        classes = manager.get_label_manager(ds).num_segmentation_heads
    return arch, [int(p) for p in conf.patch_size], channels, classes


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nnunet_fm.tools.bench",
        description="Params, FLOPs, train-step time and memory of the plugin's networks vs stock nnU-Net.",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--plans", type=Path, help="nnUNetPlans.json; the stock network is built from its configuration")
    p.add_argument("--configuration", default="3d_fullres")
    p.add_argument("--patch", type=int, nargs=3, metavar=("D", "H", "W"), help="default: plans' patch or 16 64 64")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(DEFAULT_MODELS))
    p.add_argument("--input-channels", type=int, default=1, help="used when no dataset.json sits next to --plans")
    p.add_argument("--num-classes", type=int, default=2, help="used when no dataset.json sits next to --plans")
    p.add_argument("--encoder-kwargs", type=json.loads, default={}, help="timm overrides, e.g. '{\"depth\": 2}'")
    p.add_argument("--taps", type=int, nargs="+", help="ViT block indices for the DINOv3 models")
    p.add_argument("--agg-heads", type=int, help="DINOv3-FFA aggregator heads")
    p.add_argument("--cube-size", type=int, nargs=3, metavar=("D", "H", "W"), help="sub-cube row (default: 1 cube)")
    p.add_argument("--predict-volume", type=int, nargs=3, metavar=("D", "H", "W"), help="also time sliding window")
    p.add_argument("--cube-sweep", action="store_true", help="only the sub-cube sweep over 1, 2, 4, 8 cubes")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (meant for CUDA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    return p


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Turn parsed command-line arguments into a :class:`BenchConfig`."""
    cfg = BenchConfig(
        device=args.device,
        batch=args.batch,
        repeats=args.repeats,
        models=tuple(args.models),
        input_channels=args.input_channels,
        num_classes=args.num_classes,
        encoder_kwargs=dict(args.encoder_kwargs),
        taps=tuple(args.taps) if args.taps else None,
        agg_heads=args.agg_heads,
        cube_size=tuple(args.cube_size) if args.cube_size else None,
        predict_volume=tuple(args.predict_volume) if args.predict_volume else None,
        amp=args.amp,
        seed=args.seed,
    )
    patch = args.patch
    if args.plans is not None:
        arch, plans_patch, channels, classes = _read_plans(args.plans, args.configuration)
        cfg.architecture = arch
        cfg.architecture_source = f"{args.plans} ({args.configuration}, plans patch {plans_patch})"
        patch = patch or plans_patch
        cfg.input_channels = channels or cfg.input_channels
        cfg.num_classes = classes or cfg.num_classes
    cfg.patch = tuple(patch) if patch else DEFAULT_PATCH
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: run the benchmark (or the cube sweep) and print the table."""
    args = _parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    cfg = config_from_args(args)
    if args.cube_sweep:
        rows, result = run_cube_sweep(cfg, argv=argv)
        print(format_sweep(rows, result, args.markdown))
    else:
        print(format_report(run_benchmark(cfg, argv=argv), args.markdown))
    return 0
