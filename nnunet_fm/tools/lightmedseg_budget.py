"""LightMedSeg's parameter and compute figures next to the paper's (arXiv 2603.07228, §3-§4, tables 3-4).

``python -m nnunet_fm.tools.lightmedseg_budget`` prints the table that BENCHMARKS.md quotes;
``tests/test_lightmedseg.py`` asserts every row is within its tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nnunet_fm.architectures.lightmedseg import LightMedSeg
from nnunet_fm.network_interfaces import count_parameters
from nnunet_fm.tools.report import markdown_table


@dataclass(frozen=True)
class Figure:
    """One published figure, the value this code gives, and the tolerance the issue sets (relative)."""

    name: str
    paper: float
    measured: float
    tolerance: float

    @property
    def relative_error(self) -> float:
        return self.measured / self.paper - 1

    @property
    def ok(self) -> bool:
        return abs(self.relative_error) <= self.tolerance


def _params(module: nn.Module | None) -> int:
    return 0 if module is None else count_parameters(module)[0]


def gflops(model: nn.Module, shape: tuple[int, ...] = (1, 4, 128, 128, 128)) -> float:
    """Forward GFLOPs (2 per multiply-accumulate) of ``model`` on ``shape``, counted on the meta device."""
    model = model.to("meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(shape, device="meta"))
    return counter.get_total_flops() / 1e9


def paper_figures(input_channels: int = 4, num_classes: int = 4) -> list[Figure]:
    """Every figure the paper states about the network, measured on this implementation (BraTS: 4 in, 4 out)."""

    def build(**kwargs) -> LightMedSeg:
        return LightMedSeg(input_channels, num_classes, **kwargs)

    model = build()
    return [
        Figure("parameters", 0.48e6, _params(model), 0.02),
        Figure("parameters, ghost=False (standard conv)", 0.66e6, _params(build(ghost=False)), 0.02),
        Figure("parameters, 16 anchors", 0.49e6, _params(build(num_anchors=16)), 0.02),
        Figure("parameters, 32 anchors", 0.52e6, _params(build(num_anchors=32)), 0.02),
        Figure("Global Anchor Detector", 8.6e3, _params(model.anchor_detector), 0.05),
        Figure("LSPM", 11.7e3, _params(model.lspm), 0.05),
        Figure("skip router", 24e3, _params(model.router), 0.05),
        Figure("GFLOPs at 1x4x128^3", 14.64, gflops(build()), 0.05),
    ]


def figures_table(figures: list[Figure]) -> str:
    rows = [
        (f.name, f"{f.paper:,.6g}", f"{f.measured:,.6g}", f"{100 * f.relative_error:+.1f} %", f"±{f.tolerance:.0%}")
        for f in figures
    ]
    return markdown_table(("figure", "paper", "this code", "difference", "tolerance"), rows, numeric_from=1)


def module_table(input_channels: int = 4, num_classes: int = 4) -> str:
    """Parameters per top-level module of the default network."""
    model = LightMedSeg(input_channels, num_classes)
    rows = [(name, f"{_params(child):,}") for name, child in model.named_children()]
    rows.append(("total", f"{_params(model):,}"))
    return markdown_table(("module", "parameters"), rows, numeric_from=1)


def main() -> None:
    print(figures_table(paper_figures()))
    print()
    print(module_table())


if __name__ == "__main__":
    main()
