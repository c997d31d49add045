"""The benchmark's rows, and building each benchmarked network the way nnU-Net or the plugin's trainers build it.

The rows (:data:`BENCH_MODELS`) are stated here, not in the templates: benchmark data, not part of a family's
declaration. One row is stock nnU-Net (``nnUNetTrainer`` and its planner's U-Net), the reference of every ratio;
the others each measure a registered family's network, trained by its main trainer.

The stock U-Net comes from nnU-Net's ``get_network_from_plans`` on a planner ``architecture`` block. The plugin's
networks come from a plans-style configuration (``patch_size`` + ``architecture`` with ``network_class_name`` and
``arch_kwargs``) through :func:`nnunet_fm.hooks.network.network_kwargs`, the path
``PlansNetworkMixin.build_network_architecture`` takes in every plugin trainer.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from nnunet_fm import registry
from nnunet_fm.hooks.network import network_kwargs
from nnunet_fm.tools.bench.config import DEFAULT_SPACING, STOCK, BenchConfig, RowStatusError, short_error

#: the trainer of the stock nnU-Net row
STOCK_TRAINER = "nnUNetTrainer"


@dataclass(frozen=True)
class BenchModel:
    """One row of ``python -m nnunet_fm.tools.bench``: its ``--models`` key and row label.

    ``family``: the registered family whose network it builds and whose main trainer trains it; None for the
    stock nnU-Net baseline (``nnUNetTrainer``, the planner's U-Net), which is no plugin family. ``encoder`` is passed
    as ``arch_kwargs["encoder"]`` when set; ``bench_kwargs`` names the network keywords filled from the bench
    settings (``encoder_kwargs``, ``vit_amp`` from ``--amp``, ``taps``, ``agg_heads``, ``cube_size``; unset
    settings are left out).
    """

    key: str
    label: str
    family: str | None
    encoder: str | None = None
    bench_kwargs: tuple[str, ...] = ()

    @property
    def trainer(self) -> str:
        """The trainer named to nnU-Net's predictor: stock ``nnUNetTrainer`` or the family's main trainer."""
        return STOCK_TRAINER if self.family is None else registry.family(self.family).trainer

    @property
    def network(self) -> str | None:
        """The family's ``network_class_name``; None: nnU-Net's own network (from the plans or its planner)."""
        return None if self.family is None else registry.family(self.family).network


_VIT_KWARGS = ("encoder_kwargs", "vit_amp", "taps")
#: every benchmark row, the stock nnU-Net baseline first
BENCH_MODELS: tuple[BenchModel, ...] = (
    BenchModel(STOCK, "nnU-Net PlainConvUNet (stock)", family=None),
    BenchModel(
        "ffa-s",
        "DINOv3-FFA ViT-S",
        family="dinov3_ffa",
        encoder="vit_small_patch16_dinov3",
        bench_kwargs=(*_VIT_KWARGS, "agg_heads"),
    ),
    BenchModel(
        "ffa-b",
        "DINOv3-FFA ViT-B",
        family="dinov3_ffa",
        encoder="vit_base_patch16_dinov3",
        bench_kwargs=(*_VIT_KWARGS, "agg_heads"),
    ),
    BenchModel(
        "cube",
        "DINOv3 sub-cube ViT-S (two-pass)",
        family="dinov3_cube",
        encoder="vit_small_patch16_dinov3",
        bench_kwargs=(*_VIT_KWARGS, "cube_size"),
    ),
    BenchModel("lightmedseg", "LightMedSeg", family="lightmedseg"),
)

#: model key -> bench row
_ROWS: dict[str, BenchModel] = {row.key: row for row in BENCH_MODELS}
#: model key -> (row label, DINOv3 encoder or None)
MODELS: dict[str, tuple[str, str | None]] = {key: (row.label, row.encoder) for key, row in _ROWS.items()}
#: model key -> the nnU-Net / plugin trainer that trains it
TRAINERS: dict[str, str] = {key: row.trainer for key, row in _ROWS.items()}
#: plugin model key -> ``network_class_name`` (the ``fm_network`` of its trainer)
NETWORK_CLASSES: dict[str, str] = {key: row.network for key, row in _ROWS.items() if row.network is not None}
#: the ``BenchConfig`` field of a network keyword (``BenchModel.bench_kwargs``) where the names differ
_SETTING_OF_KWARG = {"vit_amp": "amp"}

#: What nnU-Net's ExperimentPlanner writes for a 3d_fullres patch of (16, 64, 64) at 1 mm isotropic
#: spacing (PlainConvUNet, 32 base features, 320 max, feature maps >= 4 voxels per axis).
DEFAULT_ARCHITECTURE: dict[str, Any] = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 5,
        "features_per_stage": [32, 64, 128, 256, 320],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]],
        "n_conv_per_stage": [2, 2, 2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2, 2, 2],
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}


def planner_architecture(patch: Sequence[int], spacing: Sequence[float] = DEFAULT_SPACING) -> dict[str, Any]:
    """The ``architecture`` block nnU-Net's default 3D planner derives for ``patch`` at ``spacing``."""
    _, strides, kernels, planned, _ = get_pool_and_conv_props(list(spacing), list(patch), 4, 999999)
    if [int(p) for p in planned] != [int(p) for p in patch]:
        raise ValueError(
            f"nnU-Net's planner cannot use patch {list(patch)} as is (it would use {[int(p) for p in planned]}); "
            "pass --plans or a patch divisible by the pooling factors."
        )
    n = len(strides)
    arch = copy.deepcopy(DEFAULT_ARCHITECTURE)
    arch["arch_kwargs"].update(
        n_stages=n,
        features_per_stage=[min(320, 32 * 2**i) for i in range(n)],
        kernel_sizes=[[int(k) for k in ks] for ks in kernels],
        strides=[[int(s) for s in st] for st in strides],
        n_conv_per_stage=[2] * n,
        n_conv_per_stage_decoder=[2] * (n - 1),
    )
    return arch


def _json_value(value: Any) -> Any:
    """A bench setting as a plans file carries it: tuples become lists of ints, dicts are copied."""
    if isinstance(value, (tuple, list)):
        return [int(v) for v in value]
    return dict(value) if isinstance(value, dict) else value


def plugin_arch_kwargs(name: str, cfg: BenchConfig) -> dict[str, Any]:
    """``arch_kwargs`` for plugin model ``name``: its encoder and the bench settings its row takes (unset ones left
    out), JSON values as a plans file carries them."""
    row = _ROWS[name]
    kw: dict[str, Any] = {} if row.encoder is None else {"encoder": row.encoder}
    for key in row.bench_kwargs:
        value = getattr(cfg, _SETTING_OF_KWARG.get(key, key))
        if value is not None:
            kw[key] = _json_value(value)
    return kw


def configuration(name: str, cfg: BenchConfig) -> dict[str, Any]:
    """A plans-style configuration (``patch_size``, ``batch_size``, ``architecture``) for model ``name``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    if name in NETWORK_CLASSES:
        architecture = {
            "network_class_name": NETWORK_CLASSES[name],
            "arch_kwargs": plugin_arch_kwargs(name, cfg),
            "_kw_requires_import": [],
        }
    else:  # nnU-Net's own network: the plans' architecture, or what its planner derives
        architecture = cfg.architecture if cfg.architecture is not None else planner_architecture(cfg.patch)
    return {"patch_size": [int(p) for p in cfg.patch], "batch_size": cfg.batch, "architecture": architecture}


def _import_class(class_name: str) -> type:
    """Import ``module.Class``; any failure (the module may be half-written) becomes an "unavailable" status."""
    module, name = class_name.rsplit(".", 1)
    try:
        return getattr(importlib.import_module(module), name)
    except Exception as exc:
        raise RowStatusError(f"unavailable (import error: {short_error(exc)})") from exc


def build_model(name: str, cfg: BenchConfig) -> nn.Module:
    """Build architecture ``name`` (a key of ``MODELS``) for ``cfg``'s patch, channels and classes.

    Raises :class:`RowStatusError` when the model is unavailable or cannot take the patch.
    """
    conf = configuration(name, cfg)
    torch.manual_seed(cfg.seed)
    c, k = cfg.input_channels, cfg.num_classes
    arch = conf["architecture"]
    if name not in NETWORK_CLASSES:
        return get_network_from_plans(
            arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], c, k, deep_supervision=False
        )
    cls = _import_class(arch["network_class_name"])
    divisor = int(getattr(cls, "size_divisor", 1))
    if any(p % divisor for p in cfg.patch):
        raise RowStatusError(f"skipped (patch {list(cfg.patch)}: every size must be divisible by {divisor})")
    network_class, kwargs = network_kwargs(conf, conf["patch_size"], enable_deep_supervision=False)
    network = network_class(input_channels=c, num_classes=k, **kwargs)
    if hasattr(network, "initialize"):
        network.apply(network.initialize)  # as PlansNetworkMixin.build_network_architecture does
    return network
