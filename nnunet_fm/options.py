"""Every plans key a plugin trainer reads: one registry for defaults, help text and ``--set`` validation.

Trainers read these keys from their plans configuration (top level of ``configurations[NAME]``); a key
missing there falls back to the trainer's class default, which falls back to the default below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    """One documented plans key."""

    name: str
    default: Any
    help: str


_OPTIONS = [
    # schedule
    Option("num_epochs", 1000, "Training epochs (nnU-Net default 1000)."),
    Option("num_iterations_per_epoch", 250, "Training iterations per epoch."),
    Option("num_val_iterations_per_epoch", 50, "Validation iterations per epoch (pseudo-Dice)."),
    Option("save_every", 50, "Write checkpoint_latest.pth every N epochs."),
    Option("initial_lr", 5e-3, "Peak learning rate of AdamW (after warmup)."),
    Option("weight_decay", 0.05, "AdamW weight decay."),
    Option(
        "warmup_epochs",
        50,
        "Linear warmup epochs before cosine decay (clipped to num_epochs // 10 minimum 1 when num_epochs is small).",
    ),
    Option("grad_clip", 1.0, "Gradient-norm clipping threshold."),
    Option(
        "amp_dtype",
        "bfloat16",
        "Autocast dtype on CUDA: 'bfloat16' or 'float16' (float16 uses nnU-Net's grad scaler). CPU never autocasts.",
    ),
    Option("compile", False, "torch.compile the network on CUDA (off by default: frozen ViTs gain little)."),
    # few-shot sampling and patch filtering
    Option("few_shot_k", None, "Train on K labelled cases of the fold (null = all). Recorded in fewshot_cases.json."),
    Option("few_shot_seed", 0, "Seed of the deterministic few-shot case choice."),
    Option("drop_empty", True, "Skip training cases without any foreground voxel."),
    Option("min_fg_frac", 0.0, "Re-draw training patches whose foreground fraction is below this (bounded retries)."),
    Option("min_fg_retries", 10, "Maximum re-draws per batch for min_fg_frac."),
    # loss
    Option(
        "depth_min_fg_frac",
        0.0005,
        "Slices whose foreground fraction is below this contribute nothing to CE or Dice (0 disables).",
    ),
    Option("bg_weight", 0.05, "Cross-entropy weight of the background class."),
    Option("use_mfb", True, "Median-frequency balancing of cross-entropy class weights."),
    Option("init_prior_bias", True, "Initialise classifier biases to log class frequency."),
    Option("logit_clamp", 20.0, "Clamp logits to +-this before the loss (computed in fp32)."),
    # frozen encoder
    Option("encoder", "vit_small_patch16_dinov3", "timm DINOv3 model name."),
    Option("encoder_kwargs", {}, "Extra kwargs for timm.create_model (e.g. tiny test encoders)."),
    Option(
        "encoder_weights",
        None,
        "'hub', a local weights file (timm / Meta / HF-transformers), or 'none'. "
        "Unset: env nnUNet_fm_encoder_weights, else 'hub'.",
    ),
    Option("taps", [1, 4, 7, 10], "0-based ViT block indices to tap."),
    Option("vit_chunk_slices", 8, "Slices per frozen-encoder chunk (bounds memory)."),
    Option("vit_amp", False, "Run the frozen encoder under bf16 autocast."),
    # sub-cube model
    Option("cube_size", None, "Sub-cube size [D, H, W] (null = one cube = the whole patch)."),
    Option("separate_arms", False, "One decoding head per cube position instead of a shared one."),
    Option("two_pass", True, "Exact two-pass training at constant decoder memory (false = ordinary backprop)."),
    # LightMedSeg loss
    Option("boundary_weight", 1.0, "Weight of the boundary BCE term (LightMedSeg loss)."),
]

OPTIONS: dict[str, Option] = {o.name: o for o in _OPTIONS}


def option_default(name: str) -> Any:
    """Registry default of a plans key (KeyError for an unknown key)."""
    return OPTIONS[name].default
