"""One bf16-autocast training step of every registered family on CPU (issue 28 item 4).

CPU autocast is the closest stand-in for CUDA autocast a CPU-only test run has: it sends the same ops to bf16.
A heap corruption in a CPU kernel aborts the interpreter, so every step runs in a child process; the test then
fails with the child's signal and stderr instead of taking pytest down. Each child builds the family's tiny
network (tests/test_network_contract.py's ``build_tiny``), takes one fp32 step for reference and one bf16
step (forward and loss under ``torch.autocast("cpu", dtype=torch.bfloat16)``, backward, SGD step), and
prints what the assertions need as JSON.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nnunet_fm import registry

TESTS = Path(__file__).parent
NETWORK_FAMILIES = [f for f in registry.families() if f.network is not None]
#: seconds a child may take (imports included); a bf16 step of a tiny network takes 1-3 s on one thread
CHILD_TIMEOUT = 120

CHILD = r"""
import json, sys, time
import torch
sys.path.insert(0, sys.argv[1])
from test_network_contract import build_tiny, tiny_batch
from nnunet_fm import registry
from nnunet_fm.network_interfaces import unwrap

family = registry.family(sys.argv[2])
network = build_tiny(family).train()
x, y = tiny_batch(family)
if len(sys.argv) > 3:  # the issue's reproduction: DINOv3-FFA arguments and input shape as JSON
    from nnunet_fm.architectures.dinov3_ffa import DINOv3FFA
    spec = json.loads(sys.argv[3])
    torch.manual_seed(0)
    network = DINOv3FFA(1, 3, **spec["kwargs"]).train()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*spec["shape"], generator=g)
    y = torch.randint(0, 3, (spec["shape"][0], *spec["shape"][2:]), generator=g)
named = [(n, p) for n, p in unwrap(network).named_parameters() if p.requires_grad]


def step(amp):
    network.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = network(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
    loss.backward()
    return out, loss


_, loss32 = step(False)
grads32 = {n: p.grad.detach().clone() for n, p in named}
before = {n: p.detach().clone() for n, p in named}
start = time.perf_counter()
out, loss = step(True)
optimizer = torch.optim.SGD([p for _, p in named], lr=0.1)
optimizer.step()
seconds = time.perf_counter() - start

no_grad = [n for n, p in named if p.grad is None]
grads = {n: p.grad for n, p in named if p.grad is not None}
flat = torch.cat([g.flatten() for g in grads.values()])
flat32 = torch.cat([grads32[n].flatten() for n in grads])
print(json.dumps({
    "out_dtype": str(out.dtype),
    "trainable": len(named),
    "loss": loss.item(),
    "loss32": loss32.item(),
    "no_grad": no_grad,
    "nonfinite": [n for n, g in grads.items() if not torch.isfinite(g).all()],
    "zero": [n for n, g in grads.items() if not g.abs().sum() > 0],
    # parameters whose fp32 gradient norm is at least a thousandth of the largest one
    "large32": [n for n, g in grads32.items() if g.norm() >= 1e-3 * max(h.norm() for h in grads32.values())],
    "moved": sum(not torch.equal(p.detach(), before[n]) for n, p in named),
    "not_sgd": [n for n, p in named if not torch.allclose(p.detach(), before[n] - 0.1 * p.grad, rtol=0, atol=1e-6)],
    "grad_dtypes": sorted({str(g.dtype) for g in grads.values()}),
    "cosine": torch.nn.functional.cosine_similarity(flat.double(), flat32.double(), dim=0).item(),
    "seconds": seconds,
}))
"""


def run_child(family: str, *extra: str) -> dict:
    """Run one fp32 and one bf16 step of ``family`` in a child process; its JSON report (fails on a crash)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(TESTS), family, *extra],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{family}: bf16 step did not finish in {CHILD_TIMEOUT} s (a hung kernel?): {exc.stderr!r}")
    if proc.returncode != 0:
        why = f"killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 else f"rc {proc.returncode}"
        pytest.fail(f"{family}: bf16 step {why}; stderr tail:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_report(report: dict) -> None:
    """A sensible bf16 step: finite loss near fp32's, every trainable parameter got a finite, non-zero fp32
    gradient (where fp32's is not small) pointing the same way as in fp32, and the SGD step applied it."""
    assert report["out_dtype"] in ("torch.float32", "torch.bfloat16")  # FFA returns fp32 logits, others bf16
    assert abs(report["loss"] - report["loss32"]) < 0.05 * abs(report["loss32"]), report
    assert report["no_grad"] == []
    assert report["nonfinite"] == []
    # no zero gradient where fp32's is large (small ones may round to zero: LayerScale 1e-6 branches, and one
    # token per slice in the tiny FFA gives the spatial attention's query no gradient at all)
    assert not set(report["zero"]) & set(report["large32"]), report["zero"]
    assert report["large32"]
    assert report["not_sgd"] == []  # the step applied the bf16 step's fp32 gradients
    assert report["moved"] > 0.5 * report["trainable"]  # some gating paths get gradients below a step's ulp
    assert report["grad_dtypes"] == ["torch.float32"]  # autocast keeps parameters (and so grads) fp32
    assert report["cosine"] > 0.95, report["cosine"]


@pytest.mark.parametrize("family", NETWORK_FAMILIES, ids=lambda f: f.name)
def test_bf16_autocast_train_step(family: registry.Family) -> None:
    start = time.perf_counter()
    report = run_child(family.name)
    check_report(report)
    # a few seconds per family: the bf16 step itself, and the child with its imports
    assert report["seconds"] < 20, report["seconds"]
    assert time.perf_counter() - start < 90


@pytest.mark.slow
def test_bf16_autocast_train_step_issue_28_reproduction() -> None:
    """The configuration of the report: 4-block ViT, taps 0-2, no checkpointing, one 2x112x112 patch."""
    spec = {
        "kwargs": {
            "encoder_kwargs": {"embed_dim": 48, "depth": 4, "num_heads": 2},
            "taps": [0, 1, 2],
            "grad_checkpointing": False,
        },
        "shape": [1, 1, 2, 112, 112],
    }
    check_report(run_child("dinov3_ffa", json.dumps(spec)))


def test_bf16_adapter_depthwise_conv3d_matches_fp32() -> None:
    """The first suspect, isolated: the adapter's summed depthwise Conv3d (3,7,7) + (3,1,1) (stride (1,2,2)),
    forward and backward in bf16 on CPU, in a child process; gradients within bf16 rounding of fp32's."""
    code = r"""
import torch
torch.manual_seed(0)
convs = [torch.nn.Conv3d(48, 48, k, (1, 2, 2), tuple(s // 2 for s in k), groups=48) for k in ((3, 7, 7), (3, 1, 1))]
x = torch.randn(2, 48, 2, 56, 56)
# the backward gets a channels-last gradient, as behind the adapter's channels-last LayerNorm
target = torch.randn(2, 2, 28, 28, 48).permute(0, 4, 1, 2, 3)
grads = []
for amp in (False, True):
    for c in convs:
        c.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        y = convs[0](x) + convs[1](x)
    assert y.dtype == (torch.bfloat16 if amp else torch.float32), y.dtype
    (y.float() * target).sum().backward()
    grads.append(torch.cat([p.grad.flatten() for c in convs for p in c.parameters()]))
err = ((grads[1] - grads[0]).norm() / grads[0].norm()).item()
print(err)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, f"rc {proc.returncode}: {proc.stderr[-3000:]}"
    assert float(proc.stdout.strip().splitlines()[-1]) < 2e-2
