"""Formatting: ratios to the stock row, the main table and the cube-sweep table, as text or Markdown."""

from __future__ import annotations

from nnunet_fm.tools.bench.config import LOSS_KWARGS, STOCK, SWEEP_MODES, BenchConfig, BenchResult, Row, SweepRow
from nnunet_fm.tools.report import markdown_table

RATIO_FIELDS = ("step_s", "peak_bytes", "saved_bytes", "predict_s")


def add_ratios(rows: list[Row]) -> None:
    """Fill each row's ``ratios`` with its value over the stock row's (None without a usable stock value)."""
    stock = next((r for r in rows if r.name == STOCK and r.status == "ok"), None)
    for row in rows:
        for key in RATIO_FIELDS:
            ref = getattr(stock, key) if stock is not None else None
            value = getattr(row, key)
            row.ratios[key] = value / ref if value is not None and ref else None


def _fmt_int(v: int | None) -> str:
    return "" if v is None else f"{v:,}"


def _fmt(v: float | None, spec: str) -> str:
    return "" if v is None else format(v, spec)


def _mib(v: int | None) -> str:
    return "" if v is None else f"{v / 2**20:.1f}"


def _ratio(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}x"


def _table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        return markdown_table(header, rows, numeric_from=1)
    full = [r for r in rows if len(r) == len(header)]
    widths = [max(len(x) for x in col) for col in zip(header, *full)]

    def line(cells: list[str]) -> str:
        if len(cells) != len(header):  # a status row: label + message
            return f"{cells[0]:<{widths[0]}}  {cells[1]}"
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def _overrides(cfg: BenchConfig) -> list[str]:
    """A context line naming non-default DINOv3 settings (the row labels assume the defaults)."""
    kw = {
        "encoder_kwargs": cfg.encoder_kwargs,
        "taps": cfg.taps,
        "agg_heads": cfg.agg_heads,
        "cube_size": cfg.cube_size,
    }
    kw = {k: v for k, v in kw.items() if v}
    return [f"DINOv3 overrides (labels show the default encoder names): {kw}"] if kw else []


def _context(result: BenchResult, markdown: bool, extra: list[str], stock: bool = True) -> list[str]:
    cfg = result.config
    items = [f"command: `{result.command}`" if markdown else f"command: {result.command}", f"started: {result.date}"]
    items += [f"{k}: {v}" for k, v in result.machine.items()]
    items += [
        f"patch (D, H, W): {list(cfg.patch)}, batch {cfg.batch}, input channels {cfg.input_channels}, "
        f"classes {cfg.num_classes}, {'bf16 autocast' if cfg.amp else 'fp32'}",
        *([f"stock nnU-Net architecture: {cfg.architecture_source}"] if stock else []),
        *_overrides(cfg),
        f"timing: median of {max(1, cfg.repeats)} runs after 1 warm-up run",
        *extra,
        "encoder weights: random (timing and memory do not depend on weight values)",
    ]
    if markdown:
        return [f"- {i}" for i in items]
    return [f"# {i}" for i in items]


def _memory_note(device: str) -> str:
    if device == "cuda":
        return "peak mem: torch.cuda.max_memory_allocated during one step (params, grads, optimizer state included)"
    return "peak mem: growth of the process RSS during one step over the RSS before it (after malloc_trim)"


def format_report(result: BenchResult, markdown: bool = False) -> str:
    """The main table with its context (command, date, machine, definitions), as text or Markdown."""
    cfg = result.config
    predict = cfg.predict_volume is not None
    header = [
        "model",
        "trainable params",
        "frozen params",
        "GFLOP fwd/patch",
        "step s",
        "step min-max s",
        "step x stock",
        "peak mem MiB",
        "mem x stock",
        "saved act MiB",
        "saved x stock",
    ]
    if predict:
        header += ["predict s", "predict x stock"]
    body = []
    for r in result.rows:
        if r.status != "ok":
            body.append([r.label, r.status])
            continue
        cells = [
            r.label,
            _fmt_int(r.trainable),
            _fmt_int(r.frozen),
            _fmt(None if r.flops is None else r.flops / 1e9, ".2f"),
            _fmt(r.step_s, ".3f"),
            f"{r.step_min_s:.3f}-{r.step_max_s:.3f}" if r.step_min_s is not None else "",
            _ratio(r.ratios.get("step_s")),
            _mib(r.peak_bytes),
            _ratio(r.ratios.get("peak_bytes")),
            _mib(r.saved_bytes),
            _ratio(r.ratios.get("saved_bytes")),
        ]
        if predict:
            cells += [_fmt(r.predict_s, ".2f"), _ratio(r.ratios.get("predict_s"))]
        body.append(cells)
    if markdown:
        body = [r if len(r) == len(header) else [r[0], r[1]] + [""] * (len(header) - 2) for r in body]
    extra = [
        "GFLOP: torch.utils.flop_counter.FlopCounterMode, batch 1, eval mode; it counts 2 FLOPs per "
        "multiply-accumulate (GMACs = GFLOP / 2); convolutions, matmuls and attention only",
        "step: zero_grad + forward + backward + AdamW step, loss nnU-Net DC_and_CE_loss "
        f"({LOSS_KWARGS}, {{}}); the sub-cube row uses nnunet_fm.architectures.dinov3_cube_two_pass.two_pass_step",
        _memory_note(cfg.device),
        "saved act: peak bytes of tensors saved for backward during one step "
        "(nnunet_fm.tensor_memory.saved_tensor_peak)",
        "x stock: ratio to the stock nnU-Net row of the same run",
    ]
    if predict:
        extra.append(
            f"predict: nnU-Net's nnUNetPredictor.predict_sliding_window_return_logits on a random "
            f"{[cfg.input_channels, *cfg.predict_volume]} volume (tile_step_size 0.5, Gaussian weighting, no "
            "mirroring, nnU-Net's own autocast: fp16 on CUDA, none on CPU); warm-up: one single-tile prediction"
        )
    title = "## nnunet-fm benchmark" if markdown else "# nnunet-fm benchmark"
    return "\n".join([title, "", *_context(result, markdown, extra), "", _table(header, body, markdown)])


def format_sweep(rows: list[SweepRow], result: BenchResult, markdown: bool = False) -> str:
    """The ``--cube-sweep`` table (ordinary vs two-pass per number of cubes) with its context."""
    modes = SWEEP_MODES
    header = ["cubes", "cube size", "ordinary s", "two-pass s", "ordinary min s", "two-pass min s"]
    header += ["ordinary saved MiB", "two-pass saved MiB", "ordinary peak MiB", "two-pass peak MiB"]
    body = []
    for r in rows:
        if r.status != "ok":
            cells = [str(r.cubes), r.status]
            body.append(cells + [""] * (len(header) - 2) if markdown else cells)
            continue
        body.append(
            [
                str(r.cubes),
                "x".join(str(c) for c in r.cube_size or ()),
                *(_fmt(r.step_s.get(m), ".3f") for m in modes),
                *(_fmt(r.step_min_s.get(m), ".3f") for m in modes),
                *(_mib(r.saved_bytes.get(m)) for m in modes),
                *(_mib(r.peak_bytes.get(m)) for m in modes),
            ]
        )
    extra = [
        "model: DINOv3 sub-cube ViT-S (or --encoder-kwargs), cube size from halving the largest axis "
        "(in-plane >= 32, multiples of 16)",
        "ordinary: loss.backward() through the re-assembled prediction; two-pass: "
        "nnunet_fm.architectures.dinov3_cube_two_pass.two_pass_step; both + AdamW step",
        _memory_note(result.config.device),
        "saved: peak bytes of tensors saved for backward during one step (nnunet_fm.tensor_memory.saved_tensor_peak)",
    ]
    title = "## sub-cube sweep" if markdown else "# sub-cube sweep"
    return "\n".join([title, "", *_context(result, markdown, extra, stock=False), "", _table(header, body, markdown)])
