"""Tiny CPU settings of every model family, stated once: test data, not part of any shipped template.

Read by the tests (tests/test_network_contract.py builds each network alone; tests/test_trainer_runs.py trains
each trainer a few steps), by ``nnunet_fm.tools.gpu_check``'s dry run and by ``scripts/model_fingerprint.py``
(its tiny networks are built from them). tests/test_network_contract.py fails when a registered family has no
entry here. This module imports nothing of the plugin, so that the fingerprint script can load it from its own
checkout while it measures another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TinySettings:
    """Settings small enough for CPU tests of a family.

    ``arch_kwargs``/``patch_size``/``input_channels``/``num_classes``/``batch_size`` build the network alone and
    feed it a batch; ``plans_overrides`` are the further ``plans add --set`` values of a short trainer run on the
    tests' 16x48x48 fixture dataset (with ``arch_kwargs``).
    """

    patch_size: tuple[int, ...]
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    input_channels: int = 1
    num_classes: int = 3
    batch_size: int = 2
    plans_overrides: dict[str, Any] = field(default_factory=dict)


def _tiny_vit(**network: Any) -> dict[str, Any]:
    """``arch_kwargs`` of a tiny ViT network: a two-block, 32-wide encoder (random weights) plus ``network``."""
    return {"encoder_kwargs": {"embed_dim": 32, "depth": 2, "num_heads": 2}, "vit_amp": False, **network}


#: family name (its template's name) -> its tiny settings
TINY: dict[str, TinySettings] = {
    # two cubes along W; the trainer run's global patch is the fixture's 16x48x48 (18 cubes)
    "dinov3_cube": TinySettings(
        patch_size=(8, 16, 32),
        arch_kwargs=_tiny_vit(taps=[0, 1], cube_size=[8, 16, 16]),
        plans_overrides={"encoder_weights": "none"},
    ),
    # no DropPath: training-mode outputs are deterministic (compiled and eager compare equal); plans_overrides keep
    # the parent's preprocessed data, so the trainer run needs no nnUNetv2_preprocess
    "dinov3_ffa": TinySettings(
        patch_size=(2, 16, 16),
        arch_kwargs=_tiny_vit(taps=[0, 1, 1], agg_heads=2, adapter_drop_path=0.0, agg_drop_path=0.0),
        plans_overrides={
            "encoder_weights": "none",
            "patch_size": [16, 48, 48],
            "intensity": "parent",
            "inplane_size": None,
        },
    ),
    # the paper's network is already tiny (0.48M parameters); sizes must be multiples of 16
    "lightmedseg": TinySettings(patch_size=(16, 16, 16), plans_overrides={"patch_size": [16, 48, 48], "batch_size": 2}),
    # nnU-Net's own network from the fixture's plans: nothing to shrink
    "unet_fewshot": TinySettings(patch_size=(16, 48, 48)),
}


def tiny_settings(family: str) -> TinySettings:
    """The tiny settings of ``family`` (KeyError saying where to add them otherwise)."""
    try:
        return TINY[family]
    except KeyError:
        raise KeyError(f"model family {family!r} has no tiny test settings: add them to {__name__}.TINY") from None
