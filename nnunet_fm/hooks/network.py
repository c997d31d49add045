"""Networks built from the plans: ``architecture`` block plus the network's own top-level plans keys."""

from __future__ import annotations

import inspect
import os
import pydoc

from torch import nn

from nnunet_fm import registry
from nnunet_fm.errors import UserInputError
from nnunet_fm.network_interfaces import FrozenEncoderNetwork, count_parameters, unwrap
from nnunet_fm.options import Option


def network_kwargs(configuration: dict, patch_size, enable_deep_supervision: bool) -> tuple[type, dict]:
    """Network class and constructor kwargs for a (resolved) plans configuration.

    The network's options are ``arch_kwargs`` (its constructor's defaults fill the rest); ``patch_size`` /
    ``deep_supervision`` are passed when the constructor accepts them.
    """
    architecture = configuration["architecture"]
    network_class = registry.network_class(architecture["network_class_name"])
    kwargs = dict(architecture["arch_kwargs"])
    for key in architecture.get("_kw_requires_import", []):
        if kwargs.get(key) is not None:
            kwargs[key] = pydoc.locate(kwargs[key])
    accepted = inspect.signature(network_class).parameters
    if "patch_size" in accepted:
        kwargs["patch_size"] = list(patch_size)
    if "deep_supervision" in accepted:
        kwargs["deep_supervision"] = enable_deep_supervision
    return network_class, kwargs


class FamilyNetwork:
    """``fm_network`` of a trainer class: its family's network (the template's ``family.network``), or None."""

    def __get__(self, instance: object, owner: type) -> str | None:
        family = registry.family_of_class(owner)
        return None if family is None else family.network


class PlansNetworkMixin:
    """Builds any plans-selected network; no deep supervision; compile only on request."""

    fm_network = FamilyNetwork()

    fm_options = (
        Option(
            "compile", False, "torch.compile the network on CUDA (off by default: frozen ViTs gain little).", "bool"
        ),
    )

    @classmethod
    def build_network_architecture(
        cls,
        plans_manager,
        configuration_manager,
        num_input_channels: int,
        num_output_channels: int,
        enable_deep_supervision: bool = True,
    ) -> nn.Module:
        network_class, kwargs = network_kwargs(
            configuration_manager.configuration, configuration_manager.patch_size, enable_deep_supervision
        )
        network = network_class(input_channels=num_input_channels, num_classes=num_output_channels, **kwargs)
        if hasattr(network, "initialize"):
            network.apply(network.initialize)  # dynamic-network-architectures' weight init
        return network

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        decoder = getattr(unwrap(self.network), "decoder", None)
        if decoder is not None and hasattr(decoder, "deep_supervision"):
            decoder.deep_supervision = enabled

    def _do_i_compile(self) -> bool:
        """nnU-Net's ``nnUNet_compile`` variable decides when it is set; else the ``compile`` option (CUDA only)."""
        if "nnUNet_compile" in os.environ:
            return super()._do_i_compile()
        return self.device.type == "cuda" and bool(self.fm_option("compile"))

    def initialize(self):
        super().initialize()
        trainable, frozen = count_parameters(self.network)
        self.print_to_log_file(f"Parameters: {trainable:,} trainable, {frozen:,} frozen")


class FrozenEncoderWeightsMixin:
    """Loads the frozen encoder's pretrained weights in ``initialize()`` (never at network build time)."""

    fm_options = (
        Option(
            "encoder_weights",
            None,
            "'hub', a local weights file (timm / Meta / HF-transformers), or 'none'. "
            "Unset: env nnUNet_fm_encoder_weights, else 'hub'.",
            "str",
            nullable=True,
        ),
    )

    def initialize(self):
        super().initialize()
        from nnunet_fm.encoders import ENCODER_WEIGHTS_ENV_VAR, resolve_weights_spec, weights_source

        value = self.fm_option("encoder_weights")
        spec, source = resolve_weights_spec(value), weights_source(value)
        network = unwrap(self.network)
        if not isinstance(network, FrozenEncoderNetwork):
            raise TypeError(
                f"{type(self).__name__} loads encoder weights, but {type(network).__name__} has no encoder."
            )
        try:
            report = network.encoder.load_weights(spec)
        except (ValueError, FileNotFoundError) as exc:
            if ENCODER_WEIGHTS_ENV_VAR not in source:
                raise
            # the variable holds one file for every configuration: name the per-configuration key
            model = getattr(network.encoder, "model_name", type(network.encoder).__name__)
            raise UserInputError(
                f"{exc}\nThe weights '{spec}' came from the {source}, which applies to every configuration. "
                f"Configuration '{self.configuration_name}' builds encoder '{model}': give it its own weights with "
                f"the plans key encoder_weights (`nnunet-fm plans add ... --set encoder_weights=/path/to/weights`), "
                f"or unset {ENCODER_WEIGHTS_ENV_VAR}."
            ) from exc
        self.print_to_log_file(f"Frozen encoder weights ({source}): {report}")
