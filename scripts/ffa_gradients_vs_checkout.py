"""Outputs and trainable gradients of DINOv3-FFA in two checkouts, same weights and input (memory changes must be
neutral).

    python scripts/ffa_gradients_vs_checkout.py --save OUT.pt [--import-root DIR]
    python scripts/ffa_gradients_vs_checkout.py --compare A.pt B.pt

``--import-root`` puts an older package first on ``sys.path``: a folder holding ``nnunet_fm/`` with that
checkout's ``architectures``, ``trainers`` and ``plans_templates`` linked inside (the installed layout), e.g.
``git worktree add /tmp/old REV; mkdir /tmp/oldpkg; cp -r /tmp/old/nnunet_fm /tmp/oldpkg/;
for d in architectures trainers plans_templates; do ln -s /tmp/old/$d /tmp/oldpkg/nnunet_fm/$d; done``.
Tiny encoder, no DropPath, fp32, batch 2 x 5 x 64 x 48, training mode, a fixed linear loss.
"""

from __future__ import annotations

import argparse
import sys

import torch


def save(path: str) -> None:
    from nnunet_fm.architectures.dinov3_ffa import DINOv3FFA

    torch.manual_seed(0)
    net = DINOv3FFA(
        1,
        3,
        encoder_kwargs={"embed_dim": 48, "depth": 4, "num_heads": 2},
        taps=(1, 2, 3),
        agg_heads=2,
        adapter_drop_path=0.0,
        agg_drop_path=0.0,
    ).train()
    torch.manual_seed(1)
    y = net(torch.randn(2, 1, 5, 64, 48))
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    grads = {n: p.grad for n, p in net.named_parameters() if p.requires_grad}
    torch.save({"y": y.detach(), "g": grads}, path)


def compare(a_path: str, b_path: str) -> None:
    a, b = torch.load(a_path), torch.load(b_path)
    if set(a["g"]) != set(b["g"]):
        print(f"different trainable parameters: {sorted(set(a['g']) ^ set(b['g']))}")
        return
    worst = max(((a["g"][n] - b["g"][n]).abs().max() / a["g"][n].abs().max().clamp_min(1e-12)).item() for n in a["g"])
    print(f"outputs: max |difference| {(a['y'] - b['y']).abs().max().item():.3g}")
    print(f"gradients ({len(a['g'])} tensors): max |difference| / the tensor's max |gradient| {worst:.3g}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--save")
    parser.add_argument("--import-root")
    parser.add_argument("--compare", nargs=2)
    args = parser.parse_args()
    if args.import_root:
        sys.path.insert(0, args.import_root)
    if args.save:
        save(args.save)
    if args.compare:
        compare(*args.compare)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
