"""What a benchmark run is given and what it returns: settings, result rows, row statuses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: the stock nnU-Net model key; every ratio column divides by its row
STOCK = "unet"
DEFAULT_MODELS = ("unet", "ffa-s", "cube", "lightmedseg")
DEFAULT_PATCH = (16, 64, 64)
#: spacing assumed by the built-in stock architecture (no plans given)
DEFAULT_SPACING = (1.0, 1.0, 1.0)
SWEEP_CUBES = (1, 2, 4, 8)
SWEEP_MODES = ("ordinary", "two-pass")
#: nnU-Net DC_and_CE_loss settings of the benchmarked training step
LOSS_KWARGS: dict[str, Any] = {"batch_dice": False, "smooth": 1e-5, "do_bg": False}


@dataclass
class BenchConfig:
    """Everything a benchmark run depends on (see ``python -m nnunet_fm.tools.bench --help``)."""

    device: str = "cpu"
    patch: tuple[int, int, int] = DEFAULT_PATCH
    batch: int = 1
    repeats: int = 3
    models: tuple[str, ...] = DEFAULT_MODELS
    input_channels: int = 1
    num_classes: int = 2
    architecture: dict[str, Any] | None = None
    architecture_source: str = "built-in default (nnU-Net planner, 1 mm isotropic)"
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    taps: tuple[int, ...] | None = None
    agg_heads: int | None = None
    cube_size: tuple[int, int, int] | None = None
    predict_volume: tuple[int, int, int] | None = None
    amp: bool = False
    seed: int = 0


@dataclass
class Row:
    """One architecture's measurements; ``status`` is ``"ok"`` or why the row has no numbers."""

    name: str
    label: str
    status: str = "ok"
    trainable: int | None = None
    frozen: int | None = None
    flops: int | None = None
    step_s: float | None = None
    step_min_s: float | None = None
    step_max_s: float | None = None
    peak_bytes: int | None = None
    saved_bytes: int | None = None
    predict_s: float | None = None
    ratios: dict[str, float | None] = field(default_factory=dict)


@dataclass
class BenchResult:
    """Rows plus the context needed to reproduce them."""

    config: BenchConfig
    rows: list[Row]
    machine: dict[str, str]
    command: str
    date: str


@dataclass
class SweepRow:
    """Sub-cube training cost for one number of cubes, ordinary autograd vs two-pass."""

    cubes: int
    cube_size: tuple[int, int, int] | None
    status: str = "ok"
    step_s: dict[str, float] = field(default_factory=dict)
    step_min_s: dict[str, float] = field(default_factory=dict)
    saved_bytes: dict[str, int] = field(default_factory=dict)
    peak_bytes: dict[str, int] = field(default_factory=dict)


class RowStatusError(Exception):
    """A model that cannot run in this setting; the message is the row's status."""


def short_error(exc: BaseException, limit: int = 160) -> str:
    """``Type: message`` on one line, cut to ``limit`` characters (for a row's status)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
