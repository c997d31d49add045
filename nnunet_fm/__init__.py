"""nnunet-fm: foundation-model and lightweight 3D networks for nnU-Net v2, without forking nnU-Net."""

__version__ = "0.1.0"
