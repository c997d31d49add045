"""Fingerprint of what the plugin builds, to show that a refactor changed no number or behaviour.

Prints JSON: per family, the parameter counts of the default network (ViT-S/16 encoders with random weights) and
a hash of a tiny network's output (seeded init, fixed input, eval mode); per template, the configuration
``plans add`` writes for a fixed 3d_fullres parent. Run it on two checkouts and diff the output:

    OMP_NUM_THREADS=1 python scripts/model_fingerprint.py > after.json
    OMP_NUM_THREADS=1 PYTHONPATH=/path/to/old_package python scripts/model_fingerprint.py > before.json

(the same thread count on both sides: CPU reductions, and so the output hashes, depend on it; an old checkout's
package laid out as installed: ``nnunet_fm/`` with ``architectures/``, ``trainers/`` and
``plans_templates/`` inside it). Works with any checkout that has ``nnunet_fm.plans.build_configuration``. The
tiny networks are the families' tiny test settings, read from this script's own checkout
(``nnunet_fm/tools/tiny_settings.py``), so that both runs build and feed the same tiny networks.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import inspect
import json
import sys
from pathlib import Path
from types import ModuleType

import torch

PARENT = {
    "data_identifier": "nnUNetPlans_3d_fullres",
    "preprocessor_name": "DefaultPreprocessor",
    "batch_size": 2,
    "patch_size": [64, 128, 128],
    "median_image_size_in_voxels": [120, 300, 280],
    "spacing": [2.5, 0.8, 0.8],
    "normalization_schemes": ["CTNormalization"],
    "use_mask_for_norm": [False],
    "resampling_fn_data": "resample_data_or_seg_to_shape",
    "resampling_fn_seg": "resample_data_or_seg_to_shape",
    "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
    "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
    "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
    "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
    "batch_dice": True,
}


#: spatial shape of the fixed input a tiny network is fingerprinted on, where it is not its tiny patch (the cube's)
PROBE_INPUT = {"dinov3_ffa": (3, 32, 32), "lightmedseg": (16, 32, 32)}


def _tiny_settings() -> ModuleType:
    """``nnunet_fm/tools/tiny_settings.py`` of this checkout (whatever package the networks come from)."""
    path = Path(__file__).resolve().parents[1] / "nnunet_fm" / "tools" / "tiny_settings.py"
    spec = importlib.util.spec_from_file_location("_fingerprint_tiny_settings", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().contiguous().numpy().tobytes()).hexdigest()[:16]


def _counts(net: torch.nn.Module) -> dict[str, int]:
    return {
        "trainable": sum(p.numel() for p in net.parameters() if p.requires_grad),
        "total": sum(p.numel() for p in net.parameters()),
    }


def networks() -> dict[str, dict]:
    from nnunet_fm.architectures.dinov3_cube import DINOv3Cube
    from nnunet_fm.architectures.dinov3_ffa import DINOv3FFA
    from nnunet_fm.architectures.lightmedseg import LightMedSeg

    #: family -> (network class, its default build: ViT-S/16 encoders with random weights)
    builds = {
        "dinov3_ffa": (DINOv3FFA, lambda cls: cls(1, 3)),
        "dinov3_cube": (DINOv3Cube, lambda cls: cls(1, 3, [8, 32, 32])),
        "lightmedseg": (LightMedSeg, lambda cls: cls(4, 4)),
    }
    settings = _tiny_settings()
    out = {}
    for name, (cls, default) in builds.items():
        tiny = settings.tiny_settings(name)
        kwargs = {"patch_size": list(tiny.patch_size)} if "patch_size" in inspect.signature(cls).parameters else {}
        torch.manual_seed(0)
        net = cls(tiny.input_channels, tiny.num_classes, **kwargs, **copy.deepcopy(tiny.arch_kwargs)).eval()
        shape = (1, tiny.input_channels, *PROBE_INPUT.get(name, tiny.patch_size))
        x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            y = net(x)
        out[name] = {"default": _counts(default(cls)), "tiny": _counts(net), "tiny_output": _digest(y)}
    return out


def configurations() -> dict[str, dict]:
    from nnunet_fm.plans import build_configuration
    from nnunet_fm.templates import load_template, template_names
    from nnunet_fm.tools.bench.models import DEFAULT_ARCHITECTURE

    plans = {
        "plans_name": "nnUNetPlans",
        "transpose_forward": [0, 1, 2],
        "configurations": {"3d_fullres": {**copy.deepcopy(PARENT), "architecture": DEFAULT_ARCHITECTURE}},
    }
    return {name: build_configuration(copy.deepcopy(plans), load_template(name), {}) for name in template_names()}


if __name__ == "__main__":
    print(json.dumps({"networks": networks(), "configurations": configurations()}, indent=1, sort_keys=True))
