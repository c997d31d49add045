"""Reading encoder weight files safely and converting them to the timm model's state-dict layout.

Three layouts are understood:

* ``"timm"``: timm's own keys (``patch_embed.proj.weight``; DINOv3/Eva ``blocks.N.gamma_1``, DINOv2/ViT
  ``blocks.N.ls1.gamma``...).
* ``"meta"``: Meta's original checkpoints, DINOv3 (``storage_tokens``, ``blocks.N.ls1.gamma``...) and DINOv2
  (``mask_token``, ``register_tokens``...); for a non-Eva model the model's own timm ``checkpoint_filter_fn``
  converts them.
* ``"hf"``: Hugging Face ``transformers`` ``DINOv3ViTModel`` (``embeddings.patch_embeddings.weight``,
  ``layer.N.attention.q_proj.weight``...) and ``Dinov2Model`` (``embeddings.patch_embeddings.projection.weight``,
  ``encoder.layer.N.attention.attention.query.weight`` or, transformers >= 5, ``...attention.q_proj.weight``).

Nothing is unpickled beyond tensors: files are read with ``safetensors`` or with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "ACCEPTED_FORMATS_HELP",
    "FORMATS",
    "WeightsFormatError",
    "detect_format",
    "find_weights_file",
    "read_state_dict",
    "to_timm_state_dict",
]

FORMATS = ("timm", "meta", "hf")

ACCEPTED_FORMATS_HELP = (
    "accepted formats: a timm state dict of the configured model (.safetensors/.pth/.pt/.bin), Meta's original "
    "DINOv3 or DINOv2 checkpoint (e.g. dinov3_vits16_pretrain_lvd1689m-*.pth, dinov2_vits14_pretrain.pth), or a "
    "Hugging Face transformers DINOv3ViTModel / Dinov2Model (model.safetensors / pytorch_model.bin, or the "
    "directory holding it); checkpoints wrapped as "
    "{'model'|'state_dict'|'teacher'|...: state_dict} are unwrapped"
)

# Keys under which training checkpoints commonly nest the actual state dict, in order of preference.
_WRAPPER_KEYS = ("teacher", "model_ema", "model", "state_dict", "module", "backbone", "student")

# Files looked for, in order, when a directory is given.
_DIR_CANDIDATES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")

# Anchor keys (without any prefix) whose presence identifies a layout.
_ANCHORS = {
    "hf": "embeddings.patch_embeddings.weight",
    "hf_dinov2": "embeddings.patch_embeddings.projection.weight",
    "meta": "storage_tokens",
    "timm": "patch_embed.proj.weight",
}


class WeightsFormatError(ValueError):
    """A weights file could not be read or mapped onto the encoder."""


def find_weights_file(path: str | os.PathLike) -> Path:
    """Return the weights file for ``path``: the file itself, or the weights file inside a directory."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"Encoder weights not found: '{p}' does not exist.")
    if p.is_file():
        return p
    for name in _DIR_CANDIDATES:
        if (p / name).is_file():
            return p / name
    files = sorted(f for f in p.iterdir() if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES))
    if len(files) == 1:
        return files[0]
    found = ", ".join(f.name for f in files) or "none"
    raise WeightsFormatError(
        f"Directory '{p}' holds no single recognisable weights file (looked for "
        f"{', '.join(_DIR_CANDIDATES)} or exactly one *{'/*'.join(_WEIGHT_SUFFIXES)} file; found: {found}); "
        f"{ACCEPTED_FORMATS_HELP}."
    )


def _load_file(path: Path) -> object:
    """Load one file with safetensors or a weights-only ``torch.load``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if path.name.endswith(".safetensors"):
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            msg = f"Could not read '{path}' as safetensors ({e}); {ACCEPTED_FORMATS_HELP}."
            raise WeightsFormatError(msg) from e
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as torch_err:  # noqa: BLE001 - fall back to safetensors for odd suffixes
        try:
            return load_file(str(path), device="cpu")
        except Exception:  # noqa: BLE001
            pass
        raise WeightsFormatError(
            f"Could not read '{path}' as a safetensors file or a weights-only torch checkpoint "
            f"({type(torch_err).__name__}: {_short(torch_err)}); arbitrary pickled objects are never loaded. Fix: "
            "re-save only the state dict, as safetensors, on a machine where you trust the file, or download the "
            f"official weights. {ACCEPTED_FORMATS_HELP}."
        ) from torch_err


def _short(err: BaseException) -> str:
    """One informative line of a (possibly very long) torch.load error."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    hit = next((ln for ln in lines if "Unsupported global" in ln), None)
    if hit is not None:  # keep what was refused, not torch's advice on how to allow it
        return hit[hit.index("Unsupported global") :].split(" was not an allowed global")[0][:300]
    # torch's advice to retry with weights_only=False (arbitrary code execution) is never passed on
    unsafe = ("weights_only", "can still be loaded", "trust the source", "safe_globals")
    lines = [ln for ln in lines if not any(word in ln for word in unsafe)]
    return (lines[0] if lines else type(err).__name__)[:300]


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Descend into wrapper dicts until a flat ``{name: tensor}`` mapping is reached."""
    for _ in range(4):
        if not isinstance(obj, dict):
            break
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    keys = list(obj)[:8] if isinstance(obj, dict) else []
    raise WeightsFormatError(
        f"'{path}' does not contain a state dict of tensors (top-level: {type(obj).__name__}"
        f"{', keys ' + str(keys) if keys else ''}); {ACCEPTED_FORMATS_HELP}."
    )


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weights file (or a directory holding one) into a flat CPU ``{name: tensor}`` dict.

    Sharded HF checkpoints (``*.index.json``) are merged; wrapper dicts are unwrapped.
    """
    file = find_weights_file(path)
    if file.name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(file.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise WeightsFormatError(f"Could not parse shard index '{file}': {e}") from e
        sd: dict[str, torch.Tensor] = {}
        for shard in shards:
            sd.update(_unwrap(_load_file(file.parent / shard), file.parent / shard))
        return sd
    return _unwrap(_load_file(file), file)


def _find_prefix(sd: dict[str, torch.Tensor], anchor: str) -> str | None:
    """Return the prefix ``p`` such that ``p + anchor`` is a key (shortest wins), or None."""
    hits = [k[: -len(anchor)] for k in sd if k == anchor or k.endswith("." + anchor)]
    return min(hits, key=len) if hits else None


def detect_format(sd: dict[str, torch.Tensor], model: nn.Module | None = None) -> str:
    """Identify the layout of a state dict: ``"timm"``, ``"meta"`` or ``"hf"``.

    HF is recognised by ``embeddings.patch_embeddings.weight`` (DINOv3) or ``...patch_embeddings.projection.weight``
    (DINOv2), Meta by ``storage_tokens`` or ``mask_token`` (or ``ls1.gamma`` layer scales, unless ``model`` itself
    names them so, as timm's ViT does), timm by ``patch_embed.proj.weight``; any key prefix is allowed.
    """
    if _find_prefix(sd, _ANCHORS["hf"]) is not None or _find_prefix(sd, _ANCHORS["hf_dinov2"]) is not None:
        return "hf"
    native_ls = model is not None and any(k.endswith(".ls1.gamma") for k in model.state_dict())
    if (
        _find_prefix(sd, _ANCHORS["meta"]) is not None
        or _find_prefix(sd, "mask_token") is not None
        or (not native_ls and any(k.endswith(".ls1.gamma") for k in sd))
    ):
        return "meta"
    if _find_prefix(sd, _ANCHORS["timm"]) is not None:
        return "timm"
    sample = ", ".join(list(sd)[:6]) or "<empty>"
    raise WeightsFormatError(f"Unrecognised encoder weights layout (first keys: {sample}); {ACCEPTED_FORMATS_HELP}.")


def _strip_prefix(sd: dict[str, torch.Tensor], anchor: str) -> dict[str, torch.Tensor]:
    """Keep only keys under the prefix that holds ``anchor`` and remove that prefix."""
    prefix = _find_prefix(sd, anchor)
    if not prefix:
        return dict(sd)
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _is_zero(t: torch.Tensor) -> bool:
    return bool(torch.count_nonzero(t) == 0)


def _model_keys(model: nn.Module) -> set[str]:
    return set(model.state_dict().keys())


def _place_qkv_bias(
    out: dict[str, torch.Tensor],
    blk: str,
    q: torch.Tensor | None,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    keys: set[str],
) -> None:
    """Map q/k/v biases onto timm's ``q_bias``/``v_bias`` (k bias is a fixed zero buffer in timm).

    All-zero biases are dropped when the target has none (exact); anything that cannot be represented
    is kept under its source name so the strict load reports it.
    """
    has_qv = f"{blk}.attn.q_bias" in keys
    for name, b in (("q", q), ("v", v)):
        if b is None:
            continue
        if has_qv:
            out[f"{blk}.attn.{name}_bias"] = b
        elif not _is_zero(b):
            out[f"{blk}.attn.{name}_bias"] = b  # unexpected in the target -> reported
    if k is not None and not _is_zero(k):
        out[f"{blk}.attn.k_bias"] = k  # timm fixes the k bias at zero -> reported as unexpected


def _place_gated_mlp(
    out: dict[str, torch.Tensor],
    blk: str,
    gate: tuple[torch.Tensor, torch.Tensor | None],
    x: tuple[torch.Tensor, torch.Tensor | None],
    keys: set[str],
) -> None:
    """Map a SwiGLU's gate / value projections onto timm's ``SwiGLU`` or packed ``GluMlp``."""
    if f"{blk}.mlp.fc1_g.weight" in keys or f"{blk}.mlp.fc1.weight" not in keys:
        for name, (w, b) in (("fc1_g", gate), ("fc1_x", x)):
            out[f"{blk}.mlp.{name}.weight"] = w
            if b is not None:
                out[f"{blk}.mlp.{name}.bias"] = b
        return
    # GluMlp (gate_last=False): fc1 packs [gate, value] and computes act(gate) * value
    out[f"{blk}.mlp.fc1.weight"] = torch.cat([gate[0], x[0]], dim=0)
    if gate[1] is not None and x[1] is not None:
        out[f"{blk}.mlp.fc1.bias"] = torch.cat([gate[1], x[1]], dim=0)


_HF_BLOCK = re.compile(r"^(?:model\.)?(?:encoder\.)?layer\.(\d+)\.(.+)$")
_HF_BLOCK_RENAMES = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "layer_scale1.lambda1": "gamma_1",
    "layer_scale2.lambda1": "gamma_2",
    "attention.o_proj.weight": "attn.proj.weight",
    "attention.o_proj.bias": "attn.proj.bias",
}
_HF_TOP_RENAMES = {
    "embeddings.cls_token": "cls_token",
    "embeddings.register_tokens": "reg_token",
    "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.bias": "patch_embed.proj.bias",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
}
_HF_DROP = ("embeddings.mask_token",)


def _convert_hf(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    sd = _strip_prefix(sd, _ANCHORS["hf"])
    keys = _model_keys(model)
    out: dict[str, torch.Tensor] = {}
    blocks: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        m = _HF_BLOCK.match(k)
        if m:
            blocks.setdefault(int(m.group(1)), {})[m.group(2)] = v
        elif k in _HF_TOP_RENAMES:
            out[_HF_TOP_RENAMES[k]] = v
        elif k in _HF_DROP or "rope" in k or "inv_freq" in k:
            continue
        else:
            out[k] = v  # unknown -> reported by the strict load
    for i, b in sorted(blocks.items()):
        blk = f"blocks.{i}"
        qw, kw, vw = (b.pop(f"attention.{n}_proj.weight", None) for n in "qkv")
        if qw is not None and kw is not None and vw is not None:
            out[f"{blk}.attn.qkv.weight"] = torch.cat([qw, kw, vw], dim=0)
        else:
            for n, w in zip("qkv", (qw, kw, vw)):
                if w is not None:
                    out[f"{blk}.attn.{n}_proj.weight"] = w
        qb, kb, vb = (b.pop(f"attention.{n}_proj.bias", None) for n in "qkv")
        _place_qkv_bias(out, blk, qb, kb, vb, keys)
        if "mlp.gate_proj.weight" in b:
            gate = (b.pop("mlp.gate_proj.weight"), b.pop("mlp.gate_proj.bias", None))
            val = (b.pop("mlp.up_proj.weight"), b.pop("mlp.up_proj.bias", None))
            _place_gated_mlp(out, blk, gate, val, keys)
        for sub, dst in (("up_proj", "fc1"), ("down_proj", "fc2")):
            for p in ("weight", "bias"):
                if f"mlp.{sub}.{p}" in b:
                    out[f"{blk}.mlp.{dst}.{p}"] = b.pop(f"mlp.{sub}.{p}")
        for rest, v in b.items():
            out[f"{blk}.{_HF_BLOCK_RENAMES.get(rest, rest)}"] = v
    return out


def _convert_meta(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    from timm.models.eva import checkpoint_filter_fn

    anchor = _ANCHORS["meta"] if _find_prefix(sd, _ANCHORS["meta"]) is not None else "cls_token"
    sd = _strip_prefix(sd, anchor)
    keys = _model_keys(model)
    pre: dict[str, torch.Tensor] = {}
    extra: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        m = re.match(r"^(blocks\.\d+)\.(.+)$", k)
        if m and m.group(2) == "attn.qkv.bias":
            # handled here (not by timm) so that non-zero q/v biases are never silently discarded;
            # Meta masks the k part of the bias at runtime, so it is ignored like in the original
            q, _, vb = v.chunk(3, dim=0)
            _place_qkv_bias(extra, m.group(1), q, None, vb, keys)
        else:
            pre[k] = v  # timm's filter renames ls*.gamma, storage_tokens and SwiGLU mlp.w1/w2/w3
    if "storage_tokens" not in pre:
        # timm keys its DINOv3 handling off 'storage_tokens'; models without registers lack it
        pre["storage_tokens"] = torch.zeros(0)
        out = checkpoint_filter_fn(pre, model)
        out.pop("reg_token", None)
    else:
        out = checkpoint_filter_fn(pre, model)
    out.update(extra)
    return out


def _convert_timm(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    sd = _strip_prefix(sd, _ANCHORS["timm"])
    return {k: v for k, v in sd.items() if not k.startswith("rope.") and not k.endswith("attn.k_bias")}


def _is_eva(model: nn.Module) -> bool:
    from timm.models.eva import Eva

    return isinstance(model, Eva)


def _convert_with_model_filter(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Original (Meta) keys -> timm keys with the model module's own ``checkpoint_filter_fn`` (timm's converter
    for the original checkpoints of that family, e.g. DINOv2's ``mask_token`` / ``register_tokens`` / SwiGLU)."""
    sd = _strip_prefix(sd, _ANCHORS["timm"])
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    return dict(sd) if filter_fn is None else filter_fn(dict(sd), model)


_HF_DINOV2_BLOCK = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_HF_DINOV2_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
# transformers < 5 (hub checkpoints) and >= 5 names of the same tensors; Meta's names on the right
_HF_DINOV2_QKV = {
    "attention.attention.query": "q",
    "attention.attention.key": "k",
    "attention.attention.value": "v",
    "attention.q_proj": "q",
    "attention.k_proj": "k",
    "attention.v_proj": "v",
}
_HF_DINOV2_RENAMES = {
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "mlp.weights_in": "mlp.w12",
    "mlp.weights_out": "mlp.w3",
}
_HF_DINOV2_LAYER_SCALES = {"layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma"}


def _convert_hf_dinov2(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """HF ``Dinov2Model`` -> Meta DINOv2 names (q/k/v packed into ``qkv``) -> timm via the model's filter."""
    sd = _strip_prefix(sd, _ANCHORS["hf_dinov2"])
    meta: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        m = _HF_DINOV2_BLOCK.match(k)
        if not m:
            meta[_HF_DINOV2_TOP.get(k, k)] = v  # unknown keys pass on, reported by the strict load
            continue
        blk, rest = f"blocks.{m.group(1)}", m.group(2)
        module, _, param = rest.rpartition(".")
        if rest in _HF_DINOV2_LAYER_SCALES:
            meta[f"{blk}.{_HF_DINOV2_LAYER_SCALES[rest]}"] = v
        elif module in _HF_DINOV2_QKV:
            qkv.setdefault((int(m.group(1)), param), {})[_HF_DINOV2_QKV[module]] = v
        else:
            meta[f"{blk}.{_HF_DINOV2_RENAMES.get(module, module)}.{param}"] = v
    for (i, param), parts in sorted(qkv.items()):
        if set(parts) == {"q", "k", "v"}:
            meta[f"blocks.{i}.attn.qkv.{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        else:
            meta.update({f"blocks.{i}.attn.{n}_proj.{param}": t for n, t in parts.items()})  # reported
    if "mask_token" not in meta:
        meta["mask_token"] = torch.zeros(1)  # timm's filter keys its DINOv2 conversion off mask_token
    return _convert_with_model_filter(meta, model)


def to_timm_state_dict(sd: dict[str, torch.Tensor], fmt: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """Convert a state dict in layout ``fmt`` (see :func:`detect_format`) to ``model``'s timm key names.

    Eva models (DINOv3) use this module's converters; other timm models convert Meta checkpoints with their own
    timm ``checkpoint_filter_fn``. Keys that cannot be mapped are passed through unchanged so that a strict
    load names them.
    """
    if fmt == "hf":
        if _find_prefix(sd, _ANCHORS["hf_dinov2"]) is not None:
            return _convert_hf_dinov2(sd, model)
        return _convert_hf(sd, model)
    if fmt == "meta":
        return _convert_meta(sd, model) if _is_eva(model) else _convert_with_model_filter(sd, model)
    if fmt == "timm":
        return _convert_timm(sd, model)
    raise ValueError(f"Unknown weights format '{fmt}'; expected one of {FORMATS}.")


def check_state_dict(converted: dict[str, torch.Tensor], model: nn.Module) -> tuple[list[str], list[str], list[str]]:
    """Compare a converted state dict with ``model``: (missing, unexpected, shape-mismatch descriptions)."""
    target = model.state_dict()
    missing = sorted(k for k in target if k not in converted)
    unexpected = sorted(k for k in converted if k not in target)
    mismatched = sorted(
        f"{k} (file {tuple(v.shape)} vs model {tuple(target[k].shape)})"
        for k, v in converted.items()
        if k in target and tuple(v.shape) != tuple(target[k].shape)
    )
    return missing, unexpected, mismatched
