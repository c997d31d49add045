"""Activation memory of one DINOv3-FFA training step against vesselbridge3d's own model, same input.

    python scripts/memory_vs_reference.py --reference /path/to/vesselbridge3d [--depths 2 4] [--amp bf16]

The reference is imported from the given checkout (its ``vesselbridge3d/train.py``, ``SegModel3D_UNETRLite``)
with a random-init transformers ``DINOv3ViTModel`` ViT-S/16 (4 registers) in place of the hub download; our
``DINOv3FFA(1, 3)`` uses a random-init timm ViT-S/16 DINOv3. Both: batch 1, 3 classes, ``D x 336 x 336``,
CPU, one forward + cross-entropy + backward. Each (model, depth) runs in a fresh process so that its peak RSS
is its own. Columns: saved-for-backward peak (``nnunet_fm.tensor_memory.saved_tensor_peak``), live-tensor peak
including parameters (counted at torch's dispatcher, ``nnunet_fm.tensor_memory.live_tensor_peak``; torch's MemTracker
refuses modules called twice in a step and agrees within 1 % where it runs), peak RSS of the process. Not
part of CI (needs the checkout and ``transformers``); no reference code is copied into this repository.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch

SIZE = 336
NUM_CLASSES = 3


def _reference_model(checkout: Path) -> torch.nn.Module:
    """vesselbridge3d's ``SegModel3D_UNETRLite`` with a random-init ViT-S/16 DINOv3 (no download)."""
    import transformers
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    def random_vit(*_args, **_kwargs) -> torch.nn.Module:
        return DINOv3ViTModel(DINOv3ViTConfig(num_register_tokens=4))

    transformers.AutoModel.from_pretrained = random_vit
    sys.path.insert(0, str(checkout))
    from vesselbridge3d.train import SegModel3D_UNETRLite

    return SegModel3D_UNETRLite(NUM_CLASSES)


class _ReferenceAdapter(torch.nn.Module):
    """The reference model behind our input layout ``[B, 1, D, H, W]`` with its checkpointing switchable, so that
    :mod:`nnunet_fm.memory_plan` probes it exactly as it probes ours (its segments run on the whole batch; its
    full-resolution head takes 16 slices of every sample at once)."""

    memory_segments = {
        "model.adapter3d": "batch",
        "model.shared_agg": "batch",
        "model.dec": "batch",
        "model.head": "batch",
        "model.hr2d": "batch_chunk",
    }

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.grad_checkpointing = True

    def memory_probe_inplane(self, inplane: tuple[int, int]) -> tuple[int, int]:
        return (min(inplane[0], 64), min(inplane[1], 64))

    def memory_chunk_slices(self, inplane: tuple[int, int]) -> int:
        return int(self.model.hr2d_chunk)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        import vesselbridge3d.train as reference

        b, _, d, h, w = image.shape
        z = (torch.arange(d, dtype=image.dtype) / d).view(1, d, 1, 1, 1).expand(b, d, 1, h, w)
        original = reference.cp.checkpoint
        if not self.grad_checkpointing:
            reference.cp.checkpoint = lambda fn, *args, **_kw: fn(*args)
        try:
            return self.model(torch.cat([image.transpose(1, 2), z], dim=2))
        finally:
            reference.cp.checkpoint = original


def _estimates(checkout: str, crops: list[tuple[int, int]]) -> dict:
    """Planned memory (GB) of both models at ``crops`` (batch, depth) x 336^2, by nnunet_fm.memory_plan's method."""
    from nnunet_fm.architectures.dinov3_ffa import DINOv3FFA
    from nnunet_fm.memory_plan import GIB, estimate, measure_profile

    torch.manual_seed(0)
    models = {"reference": _ReferenceAdapter(_reference_model(Path(checkout))), "ours": DINOv3FFA(1, NUM_CLASSES)}
    out = {}
    for name, model in models.items():
        probe = model.memory_probe_inplane((SIZE, SIZE))
        profile = measure_profile(model, 1, NUM_CLASSES, (SIZE, SIZE), amp_dtype=None, probe_inplane=probe)
        out[name] = {f"{b}x{d}": estimate(profile, b, (d, SIZE, SIZE)).training / GIB for b, d in crops}
    return out


def _child(model_name: str, depth: int, checkout: str | None, amp: str) -> dict:
    from nnunet_fm.tools.step_memory import measure_step

    torch.manual_seed(0)
    image = torch.randn(1, 1, depth, SIZE, SIZE)
    target = torch.randint(0, NUM_CLASSES, (1, depth, SIZE, SIZE))
    if model_name == "reference":
        model = _reference_model(Path(checkout))
        z = (torch.arange(depth, dtype=torch.float32) / depth).view(1, depth, 1, 1, 1).expand(1, depth, 1, SIZE, SIZE)
        x = torch.cat([image.transpose(1, 2), z], dim=2)  # its layout: [B, D, 2 (image, z), H, W]
    else:
        from nnunet_fm.architectures.dinov3_ffa import DINOv3FFA

        model = DINOv3FFA(1, NUM_CLASSES)
        x = image
    dtype = {"fp32": None, "bf16": torch.bfloat16}[amp]
    mem = measure_step(model, x, target, amp_dtype=dtype)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {**mem.as_mib(), "rss": rss / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, help="path of a vesselbridge3d checkout (c228ac5 measured)")
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--amp", choices=("fp32", "bf16"), default="fp32", help="CPU autocast dtype of the step")
    parser.add_argument(
        "--estimate",
        action="store_true",
        help="instead: the planned training memory of both models (fp32 probe, nnunet_fm.memory_plan's method) at "
        "batch x depth 1x2, 2x24, 2x64 of 336^2",
    )
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "DEPTH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child[0], int(args.child[1]), args.reference, args.amp)))
        return 0
    if args.estimate:
        crops = [(1, 2), (2, 24), (2, 64)]
        table = _estimates(args.reference, crops)
        print(f"| planned training memory, GB (fp32, {SIZE}^2, {NUM_CLASSES} classes) | reference | ours |")
        print("|---|---:|---:|")
        for b, d in crops:
            key = f"{b}x{d}"
            print(f"| batch {b} x {d} slices | {table['reference'][key]:.1f} | {table['ours'][key]:.1f} |")
        return 0
    checkout = Path(args.reference)
    if not (checkout / "vesselbridge3d" / "train.py").is_file():
        parser.error(f"{checkout} is not a vesselbridge3d checkout (no vesselbridge3d/train.py)")
    rows = {}
    for depth in args.depths:
        for name in ("reference", "ours"):
            cmd = [
                sys.executable,
                __file__,
                "--reference",
                str(checkout),
                "--amp",
                args.amp,
                "--child",
                name,
                str(depth),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            if out.returncode:
                print(out.stderr[-2000:], file=sys.stderr)
                return out.returncode
            rows[(name, depth)] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"# {name} D={depth}: {rows[(name, depth)]}", file=sys.stderr)
    head = " | ".join(f"reference D={d} | ours D={d}" for d in args.depths)
    print(f"| per train step ({args.amp}, batch 1, {SIZE}^2, {NUM_CLASSES} classes, CPU) | {head} |")
    print("|---|" + "---:|" * (2 * len(args.depths)))
    labels = {
        "saved": "saved-for-backward peak, MiB (`tensor_memory.saved_tensor_peak`)",
        "live_peak": "live-tensor peak incl. parameters, MiB (dispatcher count)",
        "params": "parameters + buffers, MiB",
        "rss": "peak RSS of the process, MiB",
    }
    for key, label in labels.items():
        cells = " | ".join(f"{rows[(n, d)][key]:.1f}" for d in args.depths for n in ("reference", "ours"))
        print(f"| {label} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
