"""``--cube-sweep``: the sub-cube network's training cost for 1, 2, 4, 8 cubes, ordinary vs two-pass."""

from __future__ import annotations

import copy
import statistics
from collections.abc import Sequence

import torch

from nnunet_fm.tools.bench.config import (
    SWEEP_CUBES,
    SWEEP_MODES,
    BenchConfig,
    BenchResult,
    RowStatusError,
    SweepRow,
    short_error,
)
from nnunet_fm.tools.bench.models import build_model
from nnunet_fm.tools.bench.probes import machine_info, measure_memory, release_memory, time_call
from nnunet_fm.tools.bench.run import command_line, make_train_step, now


def split_cubes(patch: Sequence[int], n: int, stride: int = 16, min_inplane: int = 32) -> tuple[int, int, int] | None:
    """Cube size splitting ``patch`` into ``n`` (a power of two) cubes, or None when impossible.

    Halves the largest axis each time; in-plane sizes stay multiples of ``stride`` and at least
    ``min_inplane`` (2 tokens), depth at least 1. Ties go to depth.
    """
    size = [int(p) for p in patch]
    count = 1
    while count < n:
        ok = [
            ax
            for ax, s in enumerate(size)
            if s % 2 == 0 and (ax == 0 or ((s // 2) % stride == 0 and s // 2 >= min_inplane))
        ]
        if not ok:
            return None
        ax = max(ok, key=lambda a: (size[a], -a))
        size[ax] //= 2
        count *= 2
    return (size[0], size[1], size[2]) if count == n else None


def run_cube_sweep(
    cfg: BenchConfig, counts: Sequence[int] = SWEEP_CUBES, argv: Sequence[str] | None = None
) -> tuple[list[SweepRow], BenchResult]:
    """Step time and memory of the sub-cube network vs number of cubes, two-pass and ordinary."""
    device = torch.device(cfg.device)
    machine, started = machine_info(device), now()
    rows = []
    for n in counts:
        cube = split_cubes(cfg.patch, n)
        row = SweepRow(n, cube)
        if cube is None:
            row.status = f"skipped (patch {list(cfg.patch)} cannot be split into {n} cubes)"
            rows.append(row)
            continue
        sub = copy.copy(cfg)
        sub.cube_size = cube
        try:
            model = build_model("cube", sub).to(device)
            for mode in SWEEP_MODES:
                step = make_train_step(model, sub, device, two_pass=mode == "two-pass")
                times = time_call(step, cfg.repeats, device)
                row.step_s[mode], row.step_min_s[mode] = statistics.median(times), min(times)
                row.peak_bytes[mode], row.saved_bytes[mode] = measure_memory(step, device)
                del step
            del model
        except RowStatusError as exc:
            row.status = str(exc)
        except Exception as exc:
            row.status = f"error ({short_error(exc)})"
        release_memory()
        rows.append(row)
    return rows, BenchResult(cfg, [], machine, command_line(argv), started)
