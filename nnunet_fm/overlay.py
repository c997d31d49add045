"""PNG overlay of a prediction and its ground truth on the middle slice with the most foreground."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


def write_overlay(image_file: Path, label_file: Path, prediction_file: Path, out_png: Path) -> Path:
    """Three panels: image, ground truth, prediction (labels coloured over the image)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = sitk.GetArrayFromImage(sitk.ReadImage(str(image_file)))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
    prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction_file)))
    z = int(np.argmax((truth > 0).sum(axis=(1, 2))))
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, (title, labels) in zip(axes, [("image", None), ("ground truth", truth), ("prediction", prediction)]):
        ax.imshow(image[z], cmap="gray")
        if labels is not None:
            ax.imshow(np.ma.masked_equal(labels[z], 0), cmap="autumn", alpha=0.6, vmin=0, vmax=max(2, labels.max()))
        ax.set_title(f"{title} (slice {z})")
        ax.axis("off")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=80, bbox_inches="tight")
    plt.close(figure)
    return out_png
