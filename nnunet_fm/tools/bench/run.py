"""One benchmark run: a training step per model, measured with the probes, one row per model."""

from __future__ import annotations

import shlex
import statistics
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from torch import Tensor, nn

from nnunet_fm.architectures.dinov3_cube_two_pass import two_pass_step
from nnunet_fm.network_interfaces import count_parameters
from nnunet_fm.tools.bench.config import LOSS_KWARGS, BenchConfig, BenchResult, Row, RowStatusError, short_error
from nnunet_fm.tools.bench.models import MODELS, build_model
from nnunet_fm.tools.bench.predict import time_prediction
from nnunet_fm.tools.bench.probes import (
    autocast,
    forward_flops,
    machine_info,
    measure_memory,
    release_memory,
    time_call,
)
from nnunet_fm.tools.bench.report import add_ratios


def _batch(cfg: BenchConfig, device: torch.device) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(cfg.batch, cfg.input_channels, *cfg.patch, generator=g)
    y = torch.randint(0, cfg.num_classes, (cfg.batch, 1, *cfg.patch), generator=g)
    return x.to(device), y.to(device)


def make_train_step(model: nn.Module, cfg: BenchConfig, device: torch.device, two_pass: bool) -> Callable[[], None]:
    """A closure running one training step (zero grad, forward, backward, AdamW) on a fixed batch."""
    loss_fn = DC_and_CE_loss(dict(LOSS_KWARGS), {})
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)
    x, y = _batch(cfg, device)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if two_pass:
            with autocast(cfg, device):
                two_pass_step(model, x, y, loss_fn)
        else:
            with autocast(cfg, device):
                loss = loss_fn(model(x), y)
            loss.backward()
        opt.step()

    return step


def measure_model(name: str, cfg: BenchConfig, device: torch.device) -> Row:
    """All measurements of one architecture; failures become the row's status, never an exception."""
    row = Row(name, MODELS[name][0])
    try:
        model = build_model(name, cfg).to(device)
    except RowStatusError as exc:
        row.status = str(exc)
        return row
    except Exception as exc:
        row.status = f"error ({short_error(exc)})"
        return row
    try:
        row.trainable, row.frozen = count_parameters(model)
        row.flops = forward_flops(model, cfg, device)
        step = make_train_step(model, cfg, device, two_pass=name == "cube")
        times = time_call(step, cfg.repeats, device)
        row.step_s, row.step_min_s, row.step_max_s = statistics.median(times), min(times), max(times)
        row.peak_bytes, row.saved_bytes = measure_memory(step, device)
        if cfg.predict_volume is not None:
            row.predict_s = time_prediction(name, model, cfg, device)
    except Exception as exc:
        row.status = f"error ({short_error(exc)})"
    finally:
        del model
        release_memory()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def command_line(argv: Sequence[str] | None) -> str:
    """The command that reproduces this run (``sys.argv`` when ``argv`` is None)."""
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", "-m", "nnunet_fm.tools.bench", *args])


def now() -> str:
    """The current UTC time, to the second."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def run_benchmark(cfg: BenchConfig, argv: Sequence[str] | None = None) -> BenchResult:
    """Measure every model of ``cfg.models`` in turn and return the rows with ratios to the stock row."""
    device = torch.device(cfg.device)
    machine, started = machine_info(device), now()
    rows = [measure_model(name, cfg, device) for name in cfg.models]
    add_ratios(rows)
    return BenchResult(cfg, rows, machine, command_line(argv), started)
