"""DDP on CPU (gloo, 2 processes): each rank's gradients equal the single-process gradient of the whole batch.

Covers the two-pass step's own gradient all-reduce (sub-cube model) and plain DDP on DINOv3-FFA without
``find_unused_parameters`` (frozen encoder excluded, every trainable parameter used in each step).
"""

import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from nnunet_fm.architectures.dinov3_cube import DINOv3Cube
from nnunet_fm.architectures.dinov3_cube_two_pass import two_pass_step
from nnunet_fm.architectures.dinov3_ffa import DINOv3FFA

pytestmark = pytest.mark.e2e
TINY_ENCODER = {"embed_dim": 32, "depth": 2, "num_heads": 2}
PATCH = (4, 32, 32)


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "cube":
        model = DINOv3Cube(1, 3, list(PATCH), taps=(0, 1), cube_size=[2, 16, 16], encoder_kwargs=TINY_ENCODER)
    else:
        model = DINOv3FFA(
            1, 3, taps=(0, 1, 1), agg_heads=2, agg_drop_path=0.0, adapter_drop_path=0.0, encoder_kwargs=TINY_ENCODER
        )
    return model.train()


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 1, *PATCH, generator=g), torch.randint(0, 3, (4, *PATCH), generator=g)


def _loss(logits, target):
    return nn.functional.cross_entropy(logits, target)  # mean over the batch: rank means average to it


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _step(kind, model, x, y):
    if kind == "cube":
        two_pass_step(model, x, y, _loss)
    else:
        _loss(model(x), y).backward()


def _rank(rank: int, kind: str, port: int, queue) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        model = _model(kind)
        ddp = nn.parallel.DistributedDataParallel(model)  # no find_unused_parameters
        x, y = _batch()
        half = slice(2 * rank, 2 * rank + 2)
        _step(kind, ddp, x[half], y[half])
        queue.put((rank, {n: g.numpy() for n, g in _grads(model).items()}))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["cube", "ffa"])
def test_two_ranks_match_the_single_process_full_batch(kind):
    reference_model = _model(kind)
    x, y = _batch()
    _step(kind, reference_model, x, y)
    reference = _grads(reference_model)
    assert not any(p.requires_grad for p in reference_model.encoder.parameters())

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, kind, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for rank in (0, 1):
        assert results[rank].keys() == reference.keys()
        for name, grad in reference.items():
            torch.testing.assert_close(torch.from_numpy(results[rank][name]), grad, rtol=1e-4, atol=1e-6, msg=name)


class _MeanTeacherOnly:
    """The trainer attributes MeanTeacherMixin reads, around a DDP-wrapped network (no nnU-Net trainer needed)."""

    OPTIONS = {
        "ssl": "mean_teacher",
        "consistency_noise": 0.1,
        "consistency_weight": 1.0,
        "supervised_weight": 0.5,
        "consistency_rampup_epochs": 0,
        "ema_decay": 0.9,
    }

    def __init__(self, network: nn.Module) -> None:
        self.network = network
        self.loss = _loss
        self.label_manager = SimpleNamespace(ignore_label=None)
        self.current_epoch = 0

    def fm_option(self, name):
        return self.OPTIONS[name]

    def fm_autocast(self):
        import contextlib

        return contextlib.nullcontext()

    def scale_loss(self, loss):
        return loss


def _mean_teacher_rank(rank: int, port: int, queue) -> None:
    from nnunet_fm.hooks.mean_teacher import MeanTeacherMixin

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        torch.manual_seed(rank)  # different initial weights: DDP broadcasts rank 0's, the teacher must copy those
        model = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.SiLU(), nn.Conv3d(4, 3, 1))
        trainer = type("Trainer", (MeanTeacherMixin, _MeanTeacherOnly), {})(nn.parallel.DistributedDataParallel(model))
        trainer._fm_teacher = {n: p.detach().clone() for n, p in trainer._fm_trainable().items()}
        trainer._fm_ema_step = 0
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        torch.manual_seed(100 + rank)  # each rank draws its own consistency noise, as in training
        x, y = _batch()
        half = slice(2 * rank, 2 * rank + 2)
        for _ in range(3):
            optimizer.zero_grad()
            trainer.fm_mean_teacher_step(x[half], y[half])  # the train-step strategy Mean Teacher contributes
            optimizer.step()
            trainer.fm_ema_update()
        teacher = {n: t.numpy() for n, t in trainer._fm_teacher.items()}
        queue.put((rank, teacher, {n: p.detach().numpy() for n, p in model.named_parameters()}))
    finally:
        dist.destroy_process_group()


def test_mean_teacher_keeps_one_teacher_across_ranks():
    """Students stay equal through DDP's all-reduce and every rank's EMA teacher is the same, though ranks see
    different patches and noise."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_mean_teacher_rank, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = {rank: (teacher, student) for rank, teacher, student in (queue.get(timeout=300) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    (teacher0, student0), (teacher1, student1) = results[0], results[1]
    assert teacher0.keys() == student0.keys() and teacher0
    for name in teacher0:
        torch.testing.assert_close(torch.from_numpy(student1[name]), torch.from_numpy(student0[name]))
        torch.testing.assert_close(torch.from_numpy(teacher1[name]), torch.from_numpy(teacher0[name]))
        assert not torch.allclose(torch.from_numpy(teacher0[name]), torch.from_numpy(student0[name]))  # EMA lags
