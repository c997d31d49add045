"""The DINOv3-FFA preset's planned memory (ViT-S, 336 x 336 slices) at several crops, and what ``--gpu-memory``
would choose; the table of BENCHMARKS.md, "DINOv3-FFA at its preset size".

    python -m nnunet_fm.tools.memory_estimates [--probe fp32|bf16] [--budgets 16 24]

Probes the network as ``plans add`` does (:mod:`nnunet_fm.memory_plan`), at 1-2 slices of 64 x 64 scaled to
336 x 336; ``--probe bf16`` forces CPU bf16 autocast (slow without native bf16: minutes).
"""

from __future__ import annotations

import argparse

import torch

from nnunet_fm.architectures.dinov3_ffa import DINOv3FFA
from nnunet_fm.memory_plan import GIB, choose_geometry, estimate, measure_profile

CROPS = ((1, 2), (1, 16), (2, 24), (2, 64), (16, 64))
INPLANE = (336, 336)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probe", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--budgets", type=float, nargs="+", default=[16.0, 24.0])
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--families", action="store_true", help="also LightMedSeg and the sub-cube model")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    net = DINOv3FFA(1, args.classes, encoder_rope_rescale=2.0, vit_amp=True)
    dtype = torch.bfloat16 if args.probe == "bf16" else None
    profile = measure_profile(
        net, 1, args.classes, INPLANE, amp_dtype=dtype, probe_inplane=net.memory_probe_inplane(INPLANE)
    )
    print(f"DINOv3FFA(1, {args.classes}) ViT-S, {INPLANE[0]}x{INPLANE[1]} slices, probe {profile.policy}")
    print(
        "| batch x crop | training GB | parameters + grads + AdamW | activations | largest transient | prediction GB |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for batch, depth in CROPS:
        e = estimate(profile, batch, (depth, *INPLANE))
        static = (e.parameters + e.gradients + e.optimizer) / GIB
        print(
            f"| {batch} x {depth}x{INPLANE[0]}x{INPLANE[1]} | {e.training / GIB:.2f} | {static:.2f} | "
            f"{e.activations / GIB:.2f} | {e.transient / GIB:.2f} | {e.prediction / GIB:.2f} |"
        )
    for budget in args.budgets:
        chosen = choose_geometry(profile, budget, 2, (64, *INPLANE))
        text = "nothing fits" if chosen is None else f"crop depth {chosen[0]}, batch {chosen[1]}"
        print(f"--gpu-memory {budget:g} on the reference crop 2 x 64x336x336: {text}")
    if args.families:
        other_families(args.classes)
    return 0


def other_families(classes: int) -> None:
    """Saved-for-backward and live-tensor peaks of one fp32 CPU training step of LightMedSeg (its paper's 128^3
    crop) and the sub-cube model (ViT-S, exact two-pass step), batch 1."""
    from nnunet_fm.architectures.dinov3_cube import DINOv3Cube
    from nnunet_fm.architectures.lightmedseg import LightMedSeg
    from nnunet_fm.memory_plan import _measure_depth

    cases = {
        "LightMedSeg, 1 x 128^3": (lambda: LightMedSeg(1, classes), (128, 128, 128)),
        "sub-cube ViT-S (two-pass), 1 x 32x224x224": (
            lambda: DINOv3Cube(1, classes, patch_size=(32, 224, 224)),
            (32, 224, 224),
        ),
    }
    print("| family, batch x patch | saved for backward, MiB | live-tensor peak incl. parameters, MiB |")
    print("|---|---:|---:|")
    for label, (build, patch) in cases.items():
        torch.manual_seed(0)
        net = build()
        x = torch.randn(1, 1, *patch)
        target = torch.randint(0, classes, (1, *patch))
        saved, live, _, _ = _measure_depth(net, x, target, None, False)
        print(f"| {label} | {saved / 2**20:.1f} | {live / 2**20:.1f} |")


if __name__ == "__main__":
    raise SystemExit(main())
