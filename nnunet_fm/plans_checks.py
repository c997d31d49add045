"""``plans add`` checks that need the network itself: every network option and the encoder weights.

A configuration that ``plans add`` writes must build; otherwise the ``ValueError`` surfaces as a traceback from
``nnUNetv2_train``, after the user has preprocessed. The network is built on the meta device (no memory, no
weights), so the network's own constructor checks (taps in range, widths, cube sizes...) run at ``plans add``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from torch import nn

from nnunet_fm.errors import UserInputError

#: the weights specs that are not files (see ``FrozenViTEncoder.load_weights``)
WEIGHTS_KEYWORDS = ("hub", "none")

_FIX = "Change the value with --set (accepted values: `nnunet-fm plans list`); plans add: nothing was written."


def dataset_counts(dataset_json: dict | None) -> tuple[int, int]:
    """(input channels, output classes) of a dataset.json; (1, 2) when there is none."""
    if not dataset_json:
        return 1, 2
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {"0": ""}
    labels = dataset_json.get("labels") or {"background": 0, "foreground": 1}
    return len(channels), max(2, len(labels))


def plugin_network(plans: dict, name: str, config: dict) -> tuple[dict, type, dict] | None:
    """``(resolved configuration, network class, constructor kwargs)`` of ``config`` placed in ``plans`` as
    ``name``; None when the configuration trains one of nnU-Net's own networks."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_fm.hooks.network import network_kwargs

    architecture = config.get("architecture") or {}
    if not str(architecture.get("network_class_name", "")).startswith("nnunet_fm."):
        return None
    candidate = copy.deepcopy(plans)
    candidate["configurations"][name] = copy.deepcopy(config)
    resolved = PlansManager(candidate).get_configuration(name).configuration
    network_class, kwargs = network_kwargs(resolved, resolved["patch_size"], False)
    return resolved, network_class, kwargs


def build_on_meta(plans: dict, name: str, config: dict, dataset_json: dict | None = None) -> nn.Module | None:
    """The plugin network ``config`` describes, built on the meta device; a user error when it cannot be built.

    ``None`` for nnU-Net's own networks (nnU-Net checks those) and for a network that cannot be built on the
    meta device for a reason unrelated to its options (the trainer then builds it for real).
    """
    import torch

    found = plugin_network(plans, name, config)
    if found is None:
        return None
    _, network_class, kwargs = found
    channels, classes = dataset_counts(dataset_json)
    try:
        with torch.device("meta"):
            return network_class(input_channels=channels, num_classes=classes, **kwargs)
    except (ValueError, TypeError) as exc:
        raise UserInputError(
            f"Configuration '{name}': {network_class.__name__} cannot be built from its options: {exc} {_FIX}"
        ) from exc
    except Exception:  # noqa: BLE001 - a meta-device limitation, not the user's input: the trainer builds it
        return None


def check_encoder_weights(value: object, network: nn.Module | None) -> None:
    """``encoder_weights``: 'hub', 'none', or a readable weights file/directory in a recognised layout that
    matches the configured encoder (checked against ``network``'s encoder when it was built)."""
    from nnunet_fm import encoder_weights as ew

    if value is None or str(value).strip().lower() in WEIGHTS_KEYWORDS:
        return
    path = Path(str(value)).expanduser()
    accepted = "Give an existing weights file or directory, 'hub' (download from the internet) or 'none' (random)"
    if not path.exists():
        raise UserInputError(
            f"encoder_weights={value!r}: {path.resolve()} does not exist. {accepted}; plans add: nothing was written."
        )
    if not os.access(path, os.R_OK):
        raise UserInputError(
            f"encoder_weights={value!r}: {path} is not readable by this user; fix its permissions "
            f"(chmod a+r) or copy it somewhere readable. {accepted}; plans add: nothing was written."
        )
    vit = getattr(getattr(network, "encoder", None), "vit", None)
    try:
        state = ew.read_state_dict(path)
        layout = ew.detect_format(state, vit)
        if vit is not None:
            missing, unexpected, mismatched = ew.check_state_dict(ew.to_timm_state_dict(state, layout, vit), vit)
            if missing or unexpected or mismatched:
                model = getattr(network.encoder, "model_name", type(network.encoder).__name__)
                raise ew.WeightsFormatError(
                    f"the {layout}-layout weights do not match encoder '{model}' ({len(missing)} missing, "
                    f"{len(unexpected)} unexpected, {len(mismatched)} shape-mismatched key(s), e.g. "
                    f"{(missing + unexpected + mismatched)[0]}); give weights of this encoder or set --set encoder=..."
                )
    except (ValueError, OSError) as exc:
        raise UserInputError(f"encoder_weights={value!r}: {exc} plans add: nothing was written.") from exc
