"""Tests for the frozen timm ViT encoder (DINOv3, DINOv2, CLIP) and its weight loading (tiny configs, CPU only)."""

from __future__ import annotations

import pytest
import timm.models._builder as timm_builder
import torch
from safetensors.torch import save_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from nnunet_fm import encoder_weights as ew
from nnunet_fm.encoders import (
    ENCODER_CLASSES,
    ENCODER_WEIGHTS_ENV_VAR,
    EncoderSpec,
    FrozenViTEncoder,
    LoadReport,
    build_encoder,
    encoder_spec,
    resolve_weights_spec,
    weights_source,
    zchannel_slices,
)
from nnunet_fm.errors import UserInputError
from nnunet_fm.hooks.network import FrozenEncoderWeightsMixin

TINY = {"embed_dim": 32, "depth": 4, "num_heads": 2}
NAME = "vit_small_patch16_dinov3"
NAME_QKVB = "vit_small_patch16_dinov3_qkvb"
ALL_TAPS = (0, 1, 2, 3)
N_PREFIX = 5  # 1 CLS + 4 register tokens
DINOV2 = "vit_small_patch14_dinov2.lvd142m"
DINOV2_REG = "vit_small_patch14_reg4_dinov2.lvd142m"
CLIP = "vit_base_patch16_clip_224.openai"  # another timm ViT, with CLIP's own mean/std
TINY2 = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def _tiny(name: str = NAME, taps=ALL_TAPS, **kw) -> FrozenViTEncoder:
    return FrozenViTEncoder(name, taps=taps, **TINY, **kw)


def _images(n: int = 3, h: int = 32, w: int = 48, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, h, w, generator=g)


def _randomise_(model: nn.Module, seed: int) -> None:
    """Give every parameter (incl. norms, layer scales, biases, tokens) non-trivial random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            scale = 0.3 if p.ndim <= 1 or p.shape[0] == 1 else 0.2
            base = 1.0 if p.ndim == 1 else 0.0
            p.copy_(base + scale * torch.randn(p.shape, generator=g))


# --------------------------------------------------------------------------------------------- forward


def test_forward_shapes_and_chunking() -> None:
    enc = _tiny(taps=(1, 3), chunk_slices=2)
    _randomise_(enc.vit, seed=0)  # default layer scale 1e-5 would make blocks near-identity
    assert enc.embed_dim == 32 and enc.patch_size == 16 and enc.taps == (1, 3)
    x = _images(n=5)
    feats = enc(x)
    assert len(feats) == 2
    for f in feats:
        assert f.shape == (5, 32, 2, 3) and f.dtype == torch.float32
    enc.chunk_slices = 8
    whole = enc(x)
    for a, b in zip(feats, whole):
        # same values up to float32 summation order: multithreaded BLAS blocks a batch of 2 and of 5 differently
        # (measured: up to 5.7e-6 with 2 threads, 0 with 1); a chunking bug would differ by O(1)
        torch.testing.assert_close(a, b, rtol=0, atol=2e-5)
    # the two taps are different blocks
    assert (feats[0] - feats[1]).abs().max() > 1e-3


def test_tap_order_is_preserved() -> None:
    enc = _tiny(taps=(3, 1, 3))
    f_sorted = _tiny(taps=(1, 3))
    f_sorted.load_state_dict(enc.state_dict())
    x = _images(n=2)
    a, b, c = enc(x)
    lo, hi = f_sorted(x)
    torch.testing.assert_close(a, hi)
    torch.testing.assert_close(b, lo)
    torch.testing.assert_close(c, hi)


def test_bad_image_size_raises() -> None:
    enc = _tiny()
    with pytest.raises(ValueError, match=r"30x48.*multiple of the patch size 16"):
        enc(torch.zeros(1, 3, 30, 48))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        enc(torch.zeros(1, 1, 32, 32))


@pytest.mark.parametrize("taps", [(0, 4), (-1,), ()])
def test_bad_tap_index_raises(taps) -> None:
    with pytest.raises(ValueError, match="tap"):
        _tiny(taps=taps)


def test_amp_on_cpu_returns_float32() -> None:
    enc = _tiny(taps=(3,))
    x = _images(n=2)
    ref = enc(x)[0]
    enc.amp = True
    out = enc(x)[0]
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()


# --------------------------------------------------------------------------------------------- frozen


def test_encoder_is_frozen() -> None:
    parent = nn.Module()
    parent.enc = _tiny(taps=(2,))
    parent.head = nn.Conv2d(32, 2, 1)
    assert not any(p.requires_grad for p in parent.enc.parameters())
    parent.train()
    assert parent.training and parent.enc.training
    assert not parent.enc.vit.training
    assert not any(m.training for m in parent.enc.vit.modules())
    trainable = {id(p) for p in parent.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in parent.head.parameters()}
    x = _images(n=1).requires_grad_(True)
    feat = parent.enc(x)[0]
    assert feat.grad_fn is None and not feat.requires_grad
    # gradients still flow into the trainable head
    parent.head(feat).sum().backward()
    assert parent.head.weight.grad is not None
    # loading weights keeps it frozen
    parent.enc.load_weights("none")
    assert not any(p.requires_grad for p in parent.enc.parameters())


# --------------------------------------------------------------------------------------------- weights


@pytest.fixture(scope="module")
def hf_model():
    """A randomly initialised tiny transformers DINOv3ViTModel equivalent to timm's tiny variant."""
    import transformers

    def build(qkv_bias: bool, seed: int):
        cfg = transformers.DINOv3ViTConfig(
            hidden_size=TINY["embed_dim"],
            intermediate_size=4 * TINY["embed_dim"],  # timm mlp_ratio 4
            num_hidden_layers=TINY["depth"],
            num_attention_heads=TINY["num_heads"],
            num_register_tokens=4,
            patch_size=16,
            hidden_act="gelu",  # exact GELU as timm's Mlp
            layer_norm_eps=1e-5,  # timm DINOv3 uses LayerNorm(eps=1e-5)
            rope_theta=100.0,  # timm rope_temperature=100
            query_bias=qkv_bias,  # plain timm variant: no qkv bias; *_qkvb: q and v bias
            key_bias=False,  # timm keeps the k bias fixed at zero
            value_bias=qkv_bias,
            proj_bias=True,
            mlp_bias=True,
            use_gated_mlp=False,
        )
        torch.manual_seed(seed)
        model = transformers.DINOv3ViTModel(cfg).eval()
        _randomise_(model, seed)
        return model

    return build


def _hf_taps(model: nn.Module, x: torch.Tensor, taps) -> list[torch.Tensor]:
    """HF hidden states for timm block indices (hidden_states[0] is the embedding output)."""
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
    n, _, h, w = x.shape
    res = []
    for t in taps:
        tokens = out.hidden_states[t + 1][:, N_PREFIX:]
        res.append(tokens.reshape(n, h // 16, w // 16, -1).permute(0, 3, 1, 2))
    return res


@pytest.mark.parametrize("name,qkv_bias", [(NAME, False), (NAME_QKVB, True)])
def test_parity_with_transformers(hf_model, tmp_path, name, qkv_bias) -> None:
    model = hf_model(qkv_bias, seed=3)
    model.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "model.safetensors").is_file()
    x = _images(n=2, h=32, w=48)
    ref = _hf_taps(model, x, ALL_TAPS)
    for spec in (tmp_path, tmp_path / "model.safetensors"):
        enc = _tiny(name)
        report = enc.load_weights(spec)
        assert report == LoadReport(source=str(spec), format="hf")
        feats = enc(x)
        diffs = [(a - b).abs().max().item() for a, b in zip(feats, ref)]
        assert max(diffs) < 1e-4, diffs
        assert min(r.abs().max().item() for r in ref) > 1.0  # features are not trivially small


def test_hf_bin_and_wrapped_prefixed_checkpoints(hf_model, tmp_path) -> None:
    model = hf_model(False, seed=4)
    sd = model.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "ref.safetensors"))
    ref_enc = _tiny()
    ref_enc.load_weights(tmp_path / "ref.safetensors")
    x = _images(n=2)
    ref = ref_enc(x)

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    torch.save(sd, bin_dir / "pytorch_model.bin")
    torch.save({"model": {f"dinov3.{k}": v for k, v in sd.items()}, "epoch": 3}, tmp_path / "wrapped.pth")
    for spec, fmt in (
        (bin_dir, "hf"),
        (bin_dir / "pytorch_model.bin", "hf"),
        (tmp_path / "wrapped.pth", "hf"),
    ):
        enc = FrozenViTEncoder(NAME, taps=ALL_TAPS, weights=str(spec), **TINY)
        assert enc.weights_report.format == fmt
        for a, b in zip(enc(x), ref):
            assert torch.equal(a, b)


def _timm_to_meta(sd: dict[str, torch.Tensor], embed_dim: int) -> dict[str, torch.Tensor]:
    """Rename a timm DINOv3 state dict to Meta's original key names (test-only reverse mapping)."""
    out: dict[str, torch.Tensor] = {
        "mask_token": torch.zeros(1, embed_dim),
        "rope_embed.periods": torch.ones(embed_dim // 2 // 4),
    }
    for k, v in sd.items():
        if k.endswith("attn.q_bias"):
            blk = k[: -len(".attn.q_bias")]
            junk_k = torch.full_like(v, 7.0)  # Meta masks the k bias at runtime; it must be ignored
            out[f"{blk}.attn.qkv.bias"] = torch.cat([v, junk_k, sd[f"{blk}.attn.v_bias"]])
            out[f"{blk}.attn.qkv.bias_mask"] = torch.cat([torch.ones_like(v), torch.zeros_like(v), torch.ones_like(v)])
            continue
        if k.endswith("attn.v_bias"):
            continue
        k = k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        out[k] = v
    return out


@pytest.mark.parametrize("name", [NAME, NAME_QKVB])
def test_meta_and_timm_formats_round_trip(tmp_path, name) -> None:
    src = _tiny(name)
    _randomise_(src.vit, seed=5)
    x = _images(n=2)
    ref = src(x)
    sd = src.vit.state_dict()
    meta = _timm_to_meta(sd, TINY["embed_dim"])
    assert ew.detect_format(meta) == "meta"
    torch.save(meta, tmp_path / "dinov3_meta.pth")
    torch.save({"teacher": {f"backbone.{k}": v for k, v in meta.items()}}, tmp_path / "meta_teacher.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "timm.safetensors"))
    torch.save(src.state_dict(), tmp_path / "wrapper_state.pt")  # keys prefixed with 'vit.'
    cases = {
        "dinov3_meta.pth": "meta",
        "meta_teacher.pth": "meta",
        "timm.safetensors": "timm",
        "wrapper_state.pt": "timm",
    }
    for fname, fmt in cases.items():
        enc = _tiny(name)
        assert enc.load_weights(tmp_path / fname).format == fmt
        for a, b in zip(enc(x), ref):
            assert torch.equal(a, b), fname


def test_nonzero_bias_into_biasless_model_is_reported(tmp_path) -> None:
    src = _tiny(NAME_QKVB)
    _randomise_(src.vit, seed=6)
    torch.save(_timm_to_meta(src.vit.state_dict(), TINY["embed_dim"]), tmp_path / "meta_qkvb.pth")
    with pytest.raises(ValueError, match=r"unexpected key\(s\): blocks\.0\.attn\.q_bias.*_qkvb"):
        _tiny(NAME).load_weights(tmp_path / "meta_qkvb.pth")


# --------------------------------------------------------------------------------------------- errors


def test_missing_file_error(tmp_path) -> None:
    missing = tmp_path / "nope" / "weights.pth"
    with pytest.raises(FileNotFoundError) as ei:
        _tiny().load_weights(missing)
    assert str(missing) in str(ei.value) and ENCODER_WEIGHTS_ENV_VAR in str(ei.value)


def test_wrong_keys_error_lists_names(tmp_path) -> None:
    enc = _tiny()
    sd = dict(enc.vit.state_dict())
    for i in range(4):
        sd.pop(f"blocks.{i}.gamma_1")
    sd["blocks.0.extra.weight"] = torch.zeros(2)
    sd["norm.weight"] = torch.zeros(7)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError) as ei:
        enc.load_weights(tmp_path / "bad.safetensors")
    msg = str(ei.value)
    assert "bad.safetensors" in msg and "timm" in msg
    assert "4 missing key(s): blocks.0.gamma_1, blocks.1.gamma_1" in msg
    assert "unexpected key(s): blocks.0.extra.weight" in msg
    assert "norm.weight (file (7,) vs model (32,))" in msg

    many_missing = {k: v for k, v in enc.vit.state_dict().items() if k == "patch_embed.proj.weight"}
    save_file(many_missing, str(tmp_path / "few.safetensors"))
    with pytest.raises(ValueError, match=r"missing key\(s\): .* \.\.\. and \d+ more"):
        enc.load_weights(tmp_path / "few.safetensors")


def test_unrecognised_format_and_unsafe_pickle(tmp_path) -> None:
    save_file({"foo.weight": torch.zeros(2), "bar.bias": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match=r"other\.safetensors.*Unrecognised.*foo\.weight.*accepted formats"):
        _tiny().load_weights(tmp_path / "other.safetensors")
    torch.save({"model": nn.Linear(2, 2)}, tmp_path / "pickled.pth")  # a pickled module, not tensors
    with pytest.raises(ValueError, match=r"(?s)pickled\.pth.*Unsupported global.*accepted formats"):
        _tiny().load_weights(tmp_path / "pickled.pth")
    (tmp_path / "garbage.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.bin"):
        _tiny().load_weights(tmp_path / "garbage.bin")


def test_hub_offline_error(monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise OSError("simulated: no internet")

    for fn in ("load_state_dict_from_hf", "download_cached_file", "load_state_dict_from_url"):
        monkeypatch.setattr(timm_builder, fn, offline)
    enc = _tiny()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    with pytest.raises(RuntimeError) as ei:
        enc.load_weights("hub")
    msg = str(ei.value)
    assert "failed" in msg and "simulated: no internet" in msg
    assert ENCODER_WEIGHTS_ENV_VAR in msg and "encoder_weights" in msg and "Meta" in msg
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in before.items())


def test_none_keeps_random_init() -> None:
    enc = _tiny()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    assert enc.load_weights("none").format == "random-init"
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in before.items())


def test_resolve_weights_spec(monkeypatch) -> None:
    monkeypatch.delenv(ENCODER_WEIGHTS_ENV_VAR, raising=False)
    assert resolve_weights_spec(None) == "hub"
    assert resolve_weights_spec("") == "hub"
    assert weights_source(None) == "default"
    monkeypatch.setenv(ENCODER_WEIGHTS_ENV_VAR, "/data/dinov3.pth")
    assert resolve_weights_spec(None) == "/data/dinov3.pth"
    assert resolve_weights_spec("") == "/data/dinov3.pth"
    assert weights_source(None) == f"environment variable {ENCODER_WEIGHTS_ENV_VAR}"
    assert resolve_weights_spec("/plans/w.safetensors") == "/plans/w.safetensors"
    assert resolve_weights_spec("none") == "none"
    assert weights_source("none") == "plans key encoder_weights"


class _Base:
    def initialize(self) -> None:
        pass


class _Trainer(FrozenEncoderWeightsMixin, _Base):
    """Just what FrozenEncoderWeightsMixin.initialize reads from an nnU-Net trainer."""

    configuration_name = "3d_fm_dinov2"

    def __init__(self, network: nn.Module, encoder_weights: str | None) -> None:
        self.network, self._value, self.log = network, encoder_weights, []

    def fm_option(self, name: str):
        assert name == "encoder_weights"
        return self._value

    def print_to_log_file(self, *args) -> None:
        self.log.append(" ".join(str(a) for a in args))


def test_weights_per_configuration_win_over_the_env_var(monkeypatch, tmp_path) -> None:
    """The plans key is per configuration; the env var (one file for all) is only the fallback."""
    dinov3_file = tmp_path / "dinov3.safetensors"
    save_file({k: v.contiguous() for k, v in _tiny().vit.state_dict().items()}, str(dinov3_file))
    src = FrozenViTEncoder(DINOV2, taps=(0, 1), **TINY2)
    _randomise_(src.vit, seed=9)
    dinov2_file = tmp_path / "dinov2.pth"
    torch.save(src.vit.state_dict(), dinov2_file)
    monkeypatch.setenv(ENCODER_WEIGHTS_ENV_VAR, str(dinov3_file))
    network = nn.Module()
    network.encoder = FrozenViTEncoder(DINOV2, taps=(0, 1), **TINY2)
    trainer = _Trainer(network, str(dinov2_file))
    trainer.initialize()
    assert network.encoder.weights_report == LoadReport(source=str(dinov2_file), format="timm")
    assert torch.equal(network.encoder.vit.pos_embed, src.vit.pos_embed)
    assert trainer.log == [f"Frozen encoder weights (plans key encoder_weights): {network.encoder.weights_report}"]
    # unset in the plans: the env var's DINOv3 file is tried, and the error names the per-configuration key
    with pytest.raises(UserInputError) as ei:
        _Trainer(network, None).initialize()
    msg = str(ei.value)
    assert str(dinov3_file) in msg and ENCODER_WEIGHTS_ENV_VAR in msg and "every configuration" in msg
    assert f"'{DINOV2}'" in msg and "3d_fm_dinov2" in msg and "--set encoder_weights=" in msg


# --------------------------------------------------------------------------------------------- other encoders


def test_patch_size_and_normalisation_come_from_the_model() -> None:
    clip = FrozenViTEncoder(CLIP, taps=(1,), **TINY2)
    dinov2 = FrozenViTEncoder(DINOV2, taps=(1,), **TINY2)
    dinov3 = _tiny(taps=(1,))
    assert (dinov3.patch_size, dinov2.patch_size, clip.patch_size) == (16, 14, 16)
    assert dinov3.mean == dinov2.mean == tuple(IMAGENET_DEFAULT_MEAN)
    assert clip.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert clip.std == pytest.approx((0.26862954, 0.26130258, 0.27577711))
    for enc, name, kwargs in ((clip, CLIP, TINY2), (dinov2, DINOV2, TINY2), (dinov3, NAME, TINY)):
        spec = encoder_spec(name, kwargs)  # weightless build, as the patch rule uses
        assert (spec.patch_size, spec.embed_dim, spec.depth, spec.mean, spec.std) == (
            enc.patch_size,
            enc.embed_dim,
            len(enc.vit.blocks),
            enc.mean,
            enc.std,
        )
    # the slice builder normalises with the mean/std it is given: a CLIP-grey slice maps to 0 there only
    x = torch.zeros(1, 1, 1, 16, 16)
    z = torch.tensor([clip.mean[2]])
    x[..., 0, 0] = 1.0  # min-max then gives 0 almost everywhere
    rgb = zchannel_slices(x, z, clip.mean, clip.std)
    torch.testing.assert_close(rgb[0, :, 8, 8], -torch.tensor(clip.mean[:2] + (0.0,)) / torch.tensor(clip.std))
    assert not torch.allclose(rgb, zchannel_slices(x, z, dinov3.mean, dinov3.std))
    # a model without mean/std in its pretrained_cfg: ImageNet
    bare = FrozenViTEncoder(CLIP, taps=(1,), pretrained_cfg_overlay={"mean": None, "std": None}, **TINY2)
    assert (bare.mean, bare.std) == (tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD))


def test_dinov2_forward_intermediates_at_any_multiple_of_14() -> None:
    enc = FrozenViTEncoder(DINOV2, taps=(1, 0), chunk_slices=2, **TINY2)
    _randomise_(enc.vit, seed=2)
    x = _images(n=3, h=28, w=42)
    lo_hi = enc(x)
    assert [tuple(f.shape) for f in lo_hi] == [(3, 32, 2, 3)] * 2
    # the same as timm's own forward through the blocks (patch tokens after block 1, CLS dropped)
    with torch.no_grad():
        tokens = enc.vit.norm_pre(enc.vit._pos_embed(enc.vit.patch_embed(x)))
        for blk in enc.vit.blocks:
            tokens = blk(tokens)
    ref = tokens[:, 1:].reshape(3, 2, 3, 32).permute(0, 3, 1, 2)
    torch.testing.assert_close(lo_hi[0], ref, rtol=0, atol=2e-5)
    with pytest.raises(ValueError, match=r"32x32.*patch size 14.*e\.g\. 42x42"):
        enc(torch.zeros(1, 3, 32, 32))


def test_unknown_encoder_name_names_close_ones() -> None:
    with pytest.raises(ValueError, match=r"Unknown timm encoder 'vit_small_patch14_dinov3'.*vit_small_patch16_dinov3"):
        FrozenViTEncoder("vit_small_patch14_dinov3", taps=(0,))
    with pytest.raises(ValueError, match=r"'resnet18' cannot be built.*dynamic_img_size.*vision transformer"):
        FrozenViTEncoder("resnet18", taps=(0,))
    with pytest.raises(ValueError, match=r"cannot be built.*depht"):
        FrozenViTEncoder(DINOV2, taps=(0,), depht=2)


def _dinov2_hf(registers: int, seed: int):
    import transformers

    common = {
        "hidden_size": TINY2["embed_dim"],
        "num_hidden_layers": TINY2["depth"],
        "num_attention_heads": TINY2["num_heads"],
        "intermediate_size": 4 * TINY2["embed_dim"],
        "patch_size": 14,
        "image_size": 28,  # 2x2 positions: no interpolation on either side at 28x28
    }
    if registers:
        config = transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **common)
        model = transformers.Dinov2WithRegistersModel(config)
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**common))
    _randomise_(model, seed)
    return model.eval()


# transformers < 5 (e.g. facebook/dinov2-small on the hub) names; transformers 5 writes the right-hand ones
_HF4_NAMES = {
    "attention.q_proj": "attention.attention.query",
    "attention.k_proj": "attention.attention.key",
    "attention.v_proj": "attention.attention.value",
    "attention.o_proj": "attention.output.dense",
}


@pytest.mark.parametrize("name,registers", [(DINOV2, 0), (DINOV2_REG, 4)])
def test_dinov2_parity_with_transformers(tmp_path, name, registers) -> None:
    model = _dinov2_hf(registers, seed=7)
    model.save_pretrained(tmp_path, safe_serialization=True)
    x = _images(n=2, h=28, w=28)
    with torch.no_grad():
        hidden = model(pixel_values=x, output_hidden_states=True).hidden_states
    ref = [hidden[t + 1][:, 1 + registers :].reshape(2, 2, 2, -1).permute(0, 3, 1, 2) for t in (0, 1)]
    assert min(r.abs().max().item() for r in ref) > 1.0
    sd = model.state_dict()
    old = {}
    for k, v in sd.items():
        for new_name, old_name in _HF4_NAMES.items():
            k = k.replace(new_name, old_name)
        old[k] = v.contiguous()
    save_file(old, str(tmp_path / "hf4.safetensors"))
    for spec in (tmp_path, tmp_path / "hf4.safetensors"):
        enc = FrozenViTEncoder(name, taps=(0, 1), img_size=28, **TINY2)
        assert enc.load_weights(spec).format == "hf"
        diffs = [(a - b).abs().max().item() for a, b in zip(enc(x), ref)]
        assert max(diffs) < 1e-4, (spec, diffs)


def test_dinov2_meta_and_timm_formats_round_trip(tmp_path) -> None:
    src = FrozenViTEncoder(DINOV2_REG, taps=(0, 1), **TINY2)
    _randomise_(src.vit, seed=8)
    x = _images(n=2, h=28, w=42)
    ref = src(x)
    sd = src.vit.state_dict()
    assert ew.detect_format(sd, src.vit) == "timm"  # timm's ViT names its layer scales ls1.gamma, as Meta does
    # Meta's DINOv2 layout: CLS and registers apart, the CLS position inside pos_embed, a mask token
    meta = {k: v for k, v in sd.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    meta["register_tokens"] = sd["reg_token"]
    meta["cls_token"] = sd["cls_token"] - 0.25
    meta["pos_embed"] = torch.cat([torch.full_like(sd["pos_embed"][:, :1], 0.25), sd["pos_embed"]], dim=1)
    meta["mask_token"] = torch.zeros(1, TINY2["embed_dim"])
    assert ew.detect_format(meta, src.vit) == "meta"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in meta.items()}}, tmp_path / "dinov2_meta.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "timm.safetensors"))
    for fname, fmt in (("dinov2_meta.pth", "meta"), ("timm.safetensors", "timm")):
        enc = FrozenViTEncoder(DINOV2_REG, taps=(0, 1), **TINY2)
        assert enc.load_weights(tmp_path / fname).format == fmt
        for a, b in zip(enc(x), ref):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # DINOv3 weights into a DINOv2 model: named key mismatches, never a silent partial load
    save_file({k: v.contiguous() for k, v in _tiny().vit.state_dict().items()}, str(tmp_path / "v3.safetensors"))
    with pytest.raises(ValueError, match=r"do not match 'vit_small_patch14_reg4_dinov2.lvd142m'.*missing key"):
        FrozenViTEncoder(DINOV2_REG, taps=(0,), **TINY2).load_weights(tmp_path / "v3.safetensors")


# ---- an encoder that is not a timm ViT: one class in ENCODER_CLASSES ------------------------------------------


class ToyConvEncoder(nn.Module):
    """A frozen non-ViT encoder (strided convolutions, patch 8) with FrozenViTEncoder's interface."""

    PATCH, WIDTH = 8, 32

    def __init__(self, model_name, taps, weights=None, chunk_slices=8, amp=False, **kwargs) -> None:
        super().__init__()
        self.model_name, self.taps = model_name, tuple(taps)
        self.patch_size, self.embed_dim = self.PATCH, self.WIDTH
        self.mean, self.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
        self.stem = nn.Conv2d(3, self.WIDTH, self.PATCH, stride=self.PATCH)
        self.blocks = nn.ModuleList(nn.Conv2d(self.WIDTH, self.WIDTH, 3, padding=1) for _ in range(2))
        self.requires_grad_(False)

    @classmethod
    def spec(cls, kwargs: dict) -> EncoderSpec:
        return EncoderSpec(cls.PATCH, cls.WIDTH, 2, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

    @property
    def num_taps(self) -> int:
        return len(self.taps)

    def load_weights(self, spec) -> LoadReport:
        return LoadReport(source=str(spec), format="random-init")

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        maps, x = [], self.stem(images)
        for block in self.blocks:
            x = block(x)
            maps.append(x)
        return [maps[t] for t in self.taps]


def test_a_non_timm_encoder_is_one_registered_class(monkeypatch) -> None:
    """Networks, the encoder_patch rule and the trainer's weight loading take any class in ENCODER_CLASSES."""
    from nnunet_fm.architectures.dinov3_ffa import DINOv3FFA
    from nnunet_fm.templates import resolve_patch

    monkeypatch.setitem(ENCODER_CLASSES, "toy_conv8", ToyConvEncoder)
    assert encoder_spec("toy_conv8").patch_size == 8
    options = {"encoder": "toy_conv8", "encoder_kwargs": None}
    rule = {"multiple_of": ["encoder_patch"]}
    assert resolve_patch(rule, [4, 20, 30], None, options, user_given=False) == [4, 24, 32]
    torch.manual_seed(0)
    net = DINOv3FFA(1, 3, encoder="toy_conv8", taps=[0, 1, 1], agg_heads=2).train()
    assert isinstance(net.encoder, ToyConvEncoder) and net.patch_size == 8
    y = net(torch.randn(1, 1, 3, 16, 24))
    assert y.shape == (1, 3, 3, 16, 24)
    y.mean().backward()
    assert all(p.grad is None for p in net.encoder.parameters())
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    assert build_encoder("vit_small_patch16_dinov3", [0], embed_dim=32, depth=1, num_heads=2).patch_size == 16
