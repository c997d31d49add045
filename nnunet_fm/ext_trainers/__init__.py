"""Shim folder for nnU-Net's ``nnUNet_extTrainer`` (flat modules re-exporting plugin trainers)."""
