"""Frozen-ViT networks never run in fp16: nnU-Net's fp16 autocast at validation/prediction must not overflow."""

import pytest
import torch

from nnunet_fm.architectures.dinov3_cube import DINOv3Cube
from nnunet_fm.architectures.dinov3_ffa import DINOv3FFA
from nnunet_fm.encoders import FrozenViTEncoder

TINY_ENCODER = {"embed_dim": 32, "depth": 2, "num_heads": 2}
FP16_MAX = torch.finfo(torch.float16).max


def _inject_outliers(encoder: FrozenViTEncoder) -> None:
    """Scale one residual MLP so block activations exceed fp16's range, like DINOv3's massive activations."""
    with torch.no_grad():
        block = encoder.vit.blocks[0]
        block.gamma_2.fill_(1.0)  # layer scale
        block.mlp.fc2.bias[:4] = 1e5  # a few channels far beyond fp16's range


def _fp16_autocast():
    return torch.autocast("cpu", dtype=torch.float16)


def _network_with_outliers(network: str, vit_amp: bool) -> tuple[torch.nn.Module, torch.Tensor]:
    """A tiny FFA or cube network in eval mode whose encoder has fp16-overflowing activations, and an input."""
    torch.manual_seed(0)
    common = {"encoder_kwargs": TINY_ENCODER, "vit_amp": vit_amp}
    if network == "ffa":
        net = DINOv3FFA(1, 3, taps=(0, 1, 1), agg_heads=2, **common).eval()
    else:
        net = DINOv3Cube(1, 3, [4, 32, 32], taps=(0, 1), **common).eval()
    _inject_outliers(net.encoder)
    return net, torch.randn(1, 1, 4, 32, 32)


@pytest.mark.parametrize("amp", [False, True])
def test_encoder_ignores_an_outer_fp16_autocast(amp):
    torch.manual_seed(0)
    encoder = FrozenViTEncoder("vit_small_patch16_dinov3", taps=(0, 1), amp=amp, **TINY_ENCODER)
    _inject_outliers(encoder)
    images = torch.randn(2, 3, 32, 32)
    reference = encoder(images)
    assert max(f.abs().max().item() for f in reference) > FP16_MAX  # the outliers are real
    with _fp16_autocast():
        under_fp16 = encoder(images)
    for ours, ref in zip(under_fp16, reference):
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(
            ours, ref, rtol=0 if not amp else 2e-2, atol=0 if not amp else 2e-2 * ref.abs().max().item()
        )


@pytest.mark.parametrize("network", ["ffa", "cube"])
def test_networks_stay_finite_under_fp16_autocast(network):
    net, x = _network_with_outliers(network, vit_amp=False)
    with torch.no_grad():
        reference = net(x)
        with _fp16_autocast():
            out = net(x)
    assert torch.isfinite(out).all()
    # bf16 replaces fp16 inside the network: same prediction up to bf16 rounding
    assert (out.float().argmax(1) == reference.argmax(1)).float().mean() > 0.9


# GPUs without bf16 (V100, T4): torch.cuda.is_bf16_supported() is False and bf16 autocast raises. Patched here.


def _no_bf16(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)


def test_bf16_capability_is_read_from_the_gpu(monkeypatch):
    from nnunet_fm.precision import bf16_supported

    _no_bf16(monkeypatch)
    assert not bf16_supported("cuda") and bf16_supported("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: not including_emulation)
    assert bf16_supported("cuda")  # native support only: emulated bf16 is slow


@pytest.mark.parametrize("network", ["ffa", "cube"])
def test_without_bf16_the_encoder_side_runs_fp32_under_fp16_autocast(monkeypatch, network):
    """Where bf16 is missing, the parts kept out of fp16 (and a vit_amp encoder) run in fp32, not bf16."""
    import nnunet_fm.encoders

    monkeypatch.setattr(nnunet_fm.encoders, "bf16_supported", lambda device_type: False)  # this CPU "has no bf16"
    net, x = _network_with_outliers(network, vit_amp=True)
    with torch.no_grad():
        reference = net(x)
        with _fp16_autocast():
            out = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # a bf16 context would be left as it is
            from nnunet_fm.encoders import no_fp16_autocast

            with no_fp16_autocast("cpu"):
                assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        with _fp16_autocast(), no_fp16_autocast("cpu"):
            assert not torch.is_autocast_enabled("cpu")
    assert torch.isfinite(out).all()
    if network == "ffa":  # the whole FFA forward is kept out of fp16: fp32 throughout, the fp32 result
        torch.testing.assert_close(out, reference)
    assert (out.float().argmax(1) == reference.argmax(1)).float().mean() > 0.9


class _Encoder(torch.nn.Module):
    amp = True


class _Network(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = _Encoder()


class _StockTrainer:
    """What nnUNetTrainer gives the mixin: a CUDA device, its grad scaler, the built network, the log."""

    def __init__(self, amp_dtype: str) -> None:
        self.device = torch.device("cuda")
        self.grad_scaler = "nnU-Net's GradScaler"
        self.network = _Network()
        self.lines: list[str] = []
        self._amp_dtype = amp_dtype

    def on_train_start(self) -> None:
        pass

    def fm_option(self, name: str):
        return {"amp_dtype": self._amp_dtype}[name]

    def print_to_log_file(self, *args, also_print_to_console: bool = False) -> None:
        assert also_print_to_console
        self.lines.append(" ".join(str(a) for a in args))


def _trainer(amp_dtype: str):
    from nnunet_fm.hooks.train_step import AmpClipTrainStepMixin

    return type("Trainer", (AmpClipTrainStepMixin, _StockTrainer), {})(amp_dtype)


def test_bf16_trainer_falls_back_to_fp16_with_the_grad_scaler_on_a_gpu_without_bf16(monkeypatch):
    _no_bf16(monkeypatch)
    trainer = _trainer("bfloat16")
    trainer.on_train_start()
    assert trainer.fm_amp_dtype() == torch.float16
    assert trainer.grad_scaler == "nnU-Net's GradScaler"  # fp16 needs loss scaling
    assert trainer.network.encoder.amp is False  # frozen encoder in fp32
    assert len(trainer.lines) == 1 and "no bf16" in trainer.lines[0] and "fp16" in trainer.lines[0]


def test_bf16_trainer_keeps_bf16_where_the_gpu_has_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    trainer = _trainer("bfloat16")
    trainer.on_train_start()
    assert trainer.fm_amp_dtype() == torch.bfloat16
    assert trainer.grad_scaler is None and trainer.network.encoder.amp is True and trainer.lines == []


def test_fp16_trainer_is_unchanged_on_a_gpu_without_bf16(monkeypatch):
    _no_bf16(monkeypatch)
    trainer = _trainer("float16")
    trainer.on_train_start()
    assert trainer.fm_amp_dtype() == torch.float16
    assert trainer.grad_scaler == "nnU-Net's GradScaler" and trainer.lines == []
