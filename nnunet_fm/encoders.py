"""Frozen timm 2D ViT encoder (DINOv3, DINOv2, ...) that turns 2D slices into multi-level patch feature maps.

Any timm vision transformer with ``patch_embed``, ``blocks`` and ``forward_intermediates`` (timm's
``VisionTransformer`` and ``Eva`` families: DINOv2, DINOv3, CLIP, SigLIP, EVA-02, ...) works: the patch size, the
input normalisation (timm's ``pretrained_cfg`` mean/std) and the block count are read from the model itself.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from nnunet_fm import encoder_weights as ew
from nnunet_fm.options import SIGNATURE, Option
from nnunet_fm.precision import bf16_supported

__all__ = [
    "ENCODER_CLASSES",
    "ENCODER_WEIGHTS_ENV_VAR",
    "EncoderSpec",
    "FrozenViTEncoder",
    "LoadReport",
    "build_encoder",
    "encoder_spec",
    "normalize",
    "resolve_weights_spec",
    "weights_source",
    "zchannel_slices",
]

#: Environment variable consulted when the plans do not set ``encoder_weights`` (one value for every configuration).
ENCODER_WEIGHTS_ENV_VAR = "nnUNet_fm_encoder_weights"

_MAX_KEYS_SHOWN = 5


def no_fp16_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Inside an fp16 autocast (nnU-Net's validation and prediction on CUDA), run in bf16 instead.

    Frozen ViT features carry activation outliers beyond fp16's range (65504); bf16 has fp32's exponent range.
    Outside fp16 autocast this changes nothing.
    """
    if torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16:
        if not bf16_supported(device_type):  # V100, T4: fp32 (autocast off) keeps the outliers too
            return torch.autocast(device_type=device_type, enabled=False)
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


#: network options of every network built on FrozenViTEncoder (defaults: the network constructor's)
ENCODER_OPTIONS = (
    Option(
        "encoder",
        SIGNATURE,
        "timm ViT model name, e.g. vit_small_patch16_dinov3 or vit_small_patch14_dinov2.lvd142m (patch size and "
        "mean/std come from the model).",
        "str",
    ),
    Option(
        "encoder_kwargs",
        SIGNATURE,
        "Extra kwargs for timm.create_model (e.g. tiny test encoders).",
        "dict",
        nullable=True,
    ),
    Option("taps", SIGNATURE, "0-based ViT blocks whose outputs the network uses.", "int_list"),
    Option("vit_chunk_slices", SIGNATURE, "Slices per frozen-encoder chunk (bounds memory).", "int", minimum=1),
    Option("vit_amp", SIGNATURE, "Run the frozen encoder under bf16 autocast.", "bool"),
)


def resolve_weights_spec(value: str | None) -> str:
    """Pick the encoder weights spec: the plans value if set, else the env var, else ``"hub"``."""
    if value is not None and str(value) != "":
        return str(value)
    env = os.environ.get(ENCODER_WEIGHTS_ENV_VAR, "")
    if env != "":
        return env
    return "hub"


def weights_source(value: str | None) -> str:
    """Where :func:`resolve_weights_spec` takes the spec from, in words (for logs and error messages)."""
    if value is not None and str(value) != "":
        return "plans key encoder_weights"
    if os.environ.get(ENCODER_WEIGHTS_ENV_VAR, "") != "":
        return f"environment variable {ENCODER_WEIGHTS_ENV_VAR}"
    return "default"


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalise ``[N, 3, H, W]`` images in [0, 1] with a per-channel ``mean`` / ``std``."""
    m = torch.tensor(tuple(mean), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(tuple(std), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def minmax_slices(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Scale every 2D slice (last two axes) of ``x`` to [0, 1]; constant slices map to 0."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(eps)


def zchannel_slices(x: torch.Tensor, z: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Encoder input of a volume ``[B, C, D, H, W]``: RGB slices ``[B*D, 3, H, W]`` normalised with ``mean``/``std``.

    Per slice: R = min-max(channel 0), G = min-max(channel 1) (channel 0 again for 1-channel input),
    B = ``z[d]``, the slice-position value the caller chooses (the "Z-channel"); ``mean``/``std`` are the
    encoder's (:attr:`FrozenViTEncoder.mean` / ``.std``).
    """
    b, c, d, h, w = x.shape
    x = x.float()
    red = minmax_slices(x[:, 0])
    green = minmax_slices(x[:, 1]) if c > 1 else red
    blue = z.float().view(1, d, 1, 1).expand(b, d, h, w)
    return normalize(torch.stack([red, green, blue], dim=2).reshape(b * d, 3, h, w), mean, std)


@dataclass(frozen=True)
class EncoderSpec:
    """What a network needs to know about a timm encoder before building it."""

    patch_size: int
    embed_dim: int
    depth: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _create_vit(model_name: str, pretrained: bool, timm_kwargs: dict) -> nn.Module:
    """``timm.create_model`` with variable image size (ViTs then take any multiple of the patch size)."""
    if ":" not in model_name and not timm.is_model(model_name):  # "hf-hub:..." / "local-dir:..." go to timm
        close = difflib.get_close_matches(model_name.split(".")[0], timm.list_models(), n=5, cutoff=0.6)
        raise ValueError(
            f"Unknown timm encoder '{model_name}' (plans key encoder); close names: {', '.join(close) or 'none'}. "
            "Any timm ViT with forward_intermediates works, e.g. vit_small_patch16_dinov3 or "
            "vit_small_patch14_dinov2.lvd142m."
        )
    needs = (
        "The frozen encoder needs a timm vision transformer (VisionTransformer or Eva family: DINOv2, DINOv3, CLIP...)."
    )
    kwargs = {"dynamic_img_size": True, **timm_kwargs}
    try:
        model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
    except TypeError as exc:  # an unknown keyword: not a ViT, or a wrong encoder_kwargs entry
        raise ValueError(f"timm model '{model_name}' cannot be built with kwargs {kwargs} ({exc}). {needs}") from exc
    missing = [a for a in ("patch_embed", "blocks", "forward_intermediates", "embed_dim") if not hasattr(model, a)]
    if missing:
        raise ValueError(
            f"timm model '{model_name}' ({type(model).__name__}) is not a plain ViT: it lacks {missing}. {needs}"
        )
    return model


def _spec_of(model: nn.Module) -> EncoderSpec:
    ps = model.patch_embed.patch_size
    patch = tuple(int(p) for p in ps) if isinstance(ps, (tuple, list)) else (int(ps), int(ps))
    if patch[0] != patch[1]:
        raise ValueError(f"The frozen encoder needs square patches, '{type(model).__name__}' has {patch}.")
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(float(v) for v in (cfg.get("mean") or IMAGENET_DEFAULT_MEAN))
    std = tuple(float(v) for v in (cfg.get("std") or IMAGENET_DEFAULT_STD))
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"The frozen encoder feeds RGB slices; the model's mean/std {mean}/{std} are not 3-channel.")
    return EncoderSpec(patch[0], int(model.embed_dim), len(model.blocks), mean, std)


@functools.lru_cache(maxsize=32)
def _cached_spec(model_name: str, kwargs_json: str) -> EncoderSpec:
    with torch.device("meta"):  # shapes only: no memory, no weights
        return _spec_of(_create_vit(model_name, False, json.loads(kwargs_json)))


#: Frozen 2D encoders that are not timm ViTs, by the ``encoder`` name that selects them. A class here takes
#: :class:`FrozenViTEncoder`'s constructor arguments (``model_name, taps, weights, chunk_slices, amp, **kwargs``),
#: has its interface (``patch_size``, ``embed_dim``, ``mean``, ``std``, ``num_taps``, ``load_weights(spec)``, a
#: ``forward`` returning one ``[N, embed_dim, H/p, W/p]`` map per tap) and a classmethod ``spec(kwargs)``
#: returning its :class:`EncoderSpec` (the patch rules read it at ``plans add``). Every other name is a timm model.
ENCODER_CLASSES: dict[str, type[nn.Module]] = {}


def encoder_spec(model_name: str, timm_kwargs: dict | None = None) -> EncoderSpec:
    """Patch size, width, depth and mean/std of an encoder (timm: read from a weightless meta-device build)."""
    custom = ENCODER_CLASSES.get(str(model_name))
    if custom is not None:
        return custom.spec(dict(timm_kwargs or {}))
    return _cached_spec(str(model_name), json.dumps(dict(timm_kwargs or {}), sort_keys=True))


def build_encoder(
    model_name: str, taps: Iterable[int], chunk_slices: int = 8, amp: bool = False, **kwargs
) -> nn.Module:
    """The frozen encoder a network's ``encoder`` option names: a class of :data:`ENCODER_CLASSES`, else a timm
    ViT (:class:`FrozenViTEncoder`). Weights are loaded later (``load_weights``, in the trainer's initialize)."""
    encoder_class = ENCODER_CLASSES.get(str(model_name), FrozenViTEncoder)
    return encoder_class(model_name, taps=tuple(taps), chunk_slices=chunk_slices, amp=amp, **kwargs)


def _enable_rope_rescale(vit: nn.Module, factor: float | None) -> float | None:
    """Turn on DINOv3's train-time RoPE coordinate rescaling (log-uniform factor in [1/factor, factor], drawn per
    encoder call) on ``vit``; returns the factor in effect. HF ``DINOv3ViTModel`` applies it whenever the model is in
    train mode (``pos_embed_rescale`` 2.0), so vesselbridge3d, whose ``model.train()`` reaches its frozen ViT,
    trains with it; timm's DINOv3 has the same mechanism (``rescale_coords``) but builds it switched off. A ViT
    without DINOv3's RoPE (DINOv2: learned position embeddings) has nothing to rescale: None."""
    rope = getattr(vit, "rope", None)
    if factor is None or rope is None or not hasattr(rope, "rescale_coords"):
        return None
    if not float(factor) >= 1.0:
        raise ValueError(f"encoder_rope_rescale must be >= 1 (coordinates scaled by [1/R, R]), got {factor}")
    rope.rescale_coords = float(factor)
    rope.aug_active = True
    return float(factor)


@dataclass
class LoadReport:
    """Outcome of :meth:`FrozenViTEncoder.load_weights`."""

    source: str
    format: str
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)


class FrozenViTEncoder(nn.Module):
    """A frozen timm 2D ViT returning un-normalised patch tokens of selected blocks as NCHW maps.

    ``taps`` are 0-based block indices. Inputs must already be normalised with :attr:`mean` / :attr:`std` (the
    model's timm ``pretrained_cfg``, ImageNet when it has none) and have H, W divisible by :attr:`patch_size`
    (the model's: 16 for DINOv3, 14 for DINOv2). Parameters never require grad and the ViT always stays in eval
    mode, whatever mode the parent network is put in. ViTs are built with ``dynamic_img_size=True`` (any
    multiple of the patch size; ``encoder_kwargs`` may override it).
    """

    def __init__(
        self,
        model_name: str = "vit_small_patch16_dinov3",
        taps: Iterable[int] = (1, 4, 7, 10),
        weights: str | os.PathLike | None = None,
        chunk_slices: int = 8,
        amp: bool = False,
        rope_rescale: float | None = None,
        **timm_kwargs,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.timm_kwargs = dict(timm_kwargs)
        self.vit = _create_vit(model_name, False, self.timm_kwargs)
        spec = _spec_of(self.vit)
        depth = spec.depth
        taps = tuple(int(t) for t in taps)
        if len(taps) == 0:
            raise ValueError("FrozenViTEncoder: taps must name at least one block index.")
        bad = [t for t in taps if not 0 <= t < depth]
        if bad:
            raise ValueError(
                f"FrozenViTEncoder: tap indices {bad} are out of range for '{model_name}' with depth {depth}; "
                f"taps are 0-based block indices in [0, {depth - 1}]."
            )
        if int(chunk_slices) < 1:
            raise ValueError(f"FrozenViTEncoder: chunk_slices must be >= 1, got {chunk_slices}.")
        self.taps = taps
        self.embed_dim = spec.embed_dim
        self.patch_size = spec.patch_size
        self.mean, self.std = spec.mean, spec.std
        self.chunk_slices = int(chunk_slices)
        self.amp = bool(amp)
        self.weights_report: LoadReport | None = None
        for p in self.vit.parameters():
            p.requires_grad_(False)
        self.rope_rescale = _enable_rope_rescale(self.vit, rope_rescale)
        self._eval_vit()
        if weights is not None:
            self.load_weights(weights)

    def _eval_vit(self) -> None:
        """ViT in eval mode; its RoPE follows the wrapper's mode when ``rope_rescale`` is on."""
        self.vit.eval()
        if self.rope_rescale is not None:
            self.vit.rope.train(self.training)

    def train(self, mode: bool = True) -> FrozenViTEncoder:
        """Set the wrapper's mode but keep the ViT in eval mode (but for its RoPE, see ``rope_rescale``)."""
        super().train(mode)
        self._eval_vit()
        return self

    @property
    def num_taps(self) -> int:
        """Number of feature maps returned by :meth:`forward`."""
        return len(self.taps)

    def _check_input(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"FrozenViTEncoder expects images of shape [N, 3, H, W], got {tuple(images.shape)}.")
        h, w = images.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(
                f"FrozenViTEncoder: image size {h}x{w} (input shape {tuple(images.shape)}) is not a multiple of "
                f"the patch size {p} of '{self.model_name}'; pad or crop H and W to multiples of {p} "
                f"(e.g. {-(-h // p) * p}x{-(-w // p) * p})."
            )

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Map ``[N, 3, H, W]`` to ``len(taps)`` float32 tensors of shape ``[N, C, H/p, W/p]`` (p: patch size)."""
        self._check_input(images)
        self._eval_vit()
        p = self.patch_size
        n, _, h, w = images.shape
        if n == 0:
            return [images.new_zeros((0, self.embed_dim, h // p, w // p)) for _ in self.taps]
        param = next(self.vit.parameters())
        images = images.to(device=param.device, dtype=param.dtype)
        # Never the caller's autocast: nnU-Net validates and predicts under fp16 autocast on CUDA, and the ViT's
        # large activation outliers overflow fp16. bf16 (fp32's exponent range) when ``amp``, else fp32.
        # (a GPU without bf16, e.g. V100 or T4, runs it in fp32)
        amp = self.amp and bf16_supported(images.device.type)
        ctx = torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=amp)
        # timm returns intermediates in block order, so ask for sorted unique taps and map back
        blocks = sorted(set(self.taps))
        per_block: list[list[torch.Tensor]] = [[] for _ in blocks]
        for start in range(0, n, self.chunk_slices):
            chunk = images[start : start + self.chunk_slices]
            with ctx:
                feats = self.vit.forward_intermediates(
                    chunk,
                    indices=blocks,
                    norm=False,
                    stop_early=True,
                    output_fmt="NCHW",
                    intermediates_only=True,
                )
            for acc, f in zip(per_block, feats):
                acc.append(f.float())
        out = [acc[0] if len(acc) == 1 else torch.cat(acc, dim=0) for acc in per_block]
        return [out[blocks.index(t)] for t in self.taps]

    def load_weights(self, spec: str | os.PathLike) -> LoadReport:
        """Load the ViT weights and return a :class:`LoadReport`.

        ``spec`` is ``"hub"`` (timm's pretrained download), ``"none"`` (keep the random init) or a local
        file / directory in timm, Meta (DINOv2 / DINOv3) or HF-transformers layout (see ``nnunet_fm.encoder_weights``).
        Loading is strict: any missing, unexpected or mis-shaped key raises.
        """
        key = str(spec).strip()
        if key.lower() == "none":
            report = LoadReport(source="none", format="random-init")
        elif key.lower() == "hub":
            report = self._load_hub()
        else:
            report = self._load_file(Path(key))
        for p in self.vit.parameters():
            p.requires_grad_(False)
        self.vit.eval()
        self.weights_report = report
        return report

    def _load_hub(self) -> LoadReport:
        try:
            pretrained = _create_vit(self.model_name, True, self.timm_kwargs)
        except Exception as e:  # noqa: BLE001 - any download/cache failure gets the same advice
            raise RuntimeError(
                f"Downloading pretrained weights for '{self.model_name}' via timm / the Hugging Face hub "
                f"failed ({type(e).__name__}: {e}). Without internet access, download the checkpoint "
                f"elsewhere and pass a local file or directory, either as plans key 'encoder_weights' or "
                f"via the environment variable {ENCODER_WEIGHTS_ENV_VAR}=/path/to/weights "
                f"({ew.ACCEPTED_FORMATS_HELP}); use 'none' to keep random weights."
            ) from e
        self._load_strict(pretrained.state_dict(), source=f"hub:{self.model_name}", fmt="timm")
        return LoadReport(source=f"hub:{self.model_name}", format="timm")

    def _load_file(self, path: Path) -> LoadReport:
        path = path.expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"Encoder weights file '{path}' does not exist. Provide '{self.model_name}' weights as a local "
                f"file or directory via plans key 'encoder_weights' or the environment variable "
                f"{ENCODER_WEIGHTS_ENV_VAR} ({ew.ACCEPTED_FORMATS_HELP}); or use 'hub' to download them "
                f"or 'none' for random weights."
            )
        sd = ew.read_state_dict(path)
        try:
            fmt = ew.detect_format(sd, self.vit)
        except ew.WeightsFormatError as e:
            raise ew.WeightsFormatError(f"Encoder weights '{path}': {e}") from e
        converted = ew.to_timm_state_dict(sd, fmt, self.vit)
        self._load_strict(converted, source=str(path), fmt=fmt)
        return LoadReport(source=str(path), format=fmt)

    def _load_strict(self, sd: dict[str, torch.Tensor], source: str, fmt: str) -> None:
        missing, unexpected, mismatched = ew.check_state_dict(sd, self.vit)
        if missing or unexpected or mismatched:
            parts = []
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape-mismatched", mismatched),
            ):
                if keys:
                    shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
                    more = f" ... and {len(keys) - _MAX_KEYS_SHOWN} more" if len(keys) > _MAX_KEYS_SHOWN else ""
                    parts.append(f"{len(keys)} {label} key(s): {shown}{more}")
            hint = ""
            if any(k.endswith(("q_bias", "v_bias")) for k in unexpected + missing):
                hint = " (q/v bias differences: try the '<name>_qkvb' timm variant or the plain one)"
            raise ew.WeightsFormatError(
                f"Weights from '{source}' (detected format: {fmt}) do not match '{self.model_name}' "
                f"(embed_dim={self.embed_dim}, depth={len(self.vit.blocks)}): "
                + "; ".join(parts)
                + hint
                + f". Check that the model name matches the checkpoint; {ew.ACCEPTED_FORMATS_HELP}."
            )
        ref = next(iter(self.vit.state_dict().values()))
        self.vit.load_state_dict({k: v.to(ref.device) for k, v in sd.items()}, strict=True)
