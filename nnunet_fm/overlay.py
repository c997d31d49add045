"""PNG overview of a prediction and its reference: axial, coronal and sagittal MIPs plus one axial slice.

Rows: the maximum-intensity projection (MIP) of the image along each axis, then the axial slice with the most
reference foreground. Columns: the image alone, the reference labels over it, the prediction over it. A label
MIP is the maximum of each class's mask along the axis (where several classes project onto one pixel, the
highest label is drawn); every class has one colour, named in the legend (class names from the dataset.json).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

#: (row title, projected axis) of the MIP rows; arrays are (z, y, x)
VIEWS = (("axial MIP", 0), ("coronal MIP", 1), ("sagittal MIP", 2))
COLUMNS = ("image", "reference", "prediction")


def _read(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), tuple(image.GetSpacing())[::-1]


def _label_projection(labels: np.ndarray, axis: int, classes: list[int]) -> np.ndarray:
    """Per-class maximum along ``axis``; the highest class wins where several project onto one pixel."""
    projection = np.zeros(np.delete(labels.shape, axis), dtype=np.int16)
    for value in sorted(classes):
        projection[(labels == value).any(axis=axis)] = value
    return projection


def overlay_figure(
    image_file: Path, label_file: Path, prediction_file: Path, class_names: dict[int, str] | None = None
):
    """The matplotlib figure (4 rows x 3 columns of axes, legend below); ``class_names``: label value -> name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    image, spacing = _read(image_file)
    truth, _ = _read(label_file)
    prediction, _ = _read(prediction_file)
    if class_names is None:
        found = (set(np.unique(truth)) | set(np.unique(prediction))) - {0}
        class_names = {int(v): f"label {v}" for v in sorted(found)}
    classes = sorted(class_names)
    palette = plt.get_cmap("tab10")
    colours = {value: palette(i % 10) for i, value in enumerate(classes)}
    cmap = ListedColormap([colours[v] for v in classes] or ["red"])

    z = int(np.argmax((truth > 0).sum(axis=(1, 2))))
    rows = []
    for title, axis in VIEWS:
        shown = [a for a in range(3) if a != axis]
        aspect = spacing[shown[0]] / spacing[shown[1]]  # pixel height / width in mm
        rows.append(
            (title, image.max(axis=axis), [_label_projection(s, axis, classes) for s in (truth, prediction)], aspect)
        )
    rows.append(
        (f"axial slice {z}", image[z], [np.where(np.isin(s[z], classes), s[z], 0) for s in (truth, prediction)], 1.0)
    )

    panel = 3.6  # inches per panel width; each row as tall as its views' height/width ratio in mm
    ratios = [background.shape[0] * aspect / background.shape[1] for _, background, _, aspect in rows]
    figure, axes = plt.subplots(
        len(rows),
        3,
        figsize=(3 * panel, sum(panel * r + 0.35 for r in ratios) + 0.5),
        gridspec_kw={"height_ratios": ratios},
        squeeze=False,
    )
    colour_index = np.full(max(classes, default=0) + 1, -1)  # label value -> colour (-1: not drawn)
    colour_index[classes] = np.arange(len(classes))
    for (title, background, label_maps, aspect), row_axes in zip(rows, axes):
        for column, ax in enumerate(row_axes):
            origin = "upper" if title.startswith("axial") else "lower"  # coronal/sagittal: slice 0 at the bottom
            ax.imshow(background, cmap="gray", aspect=aspect, origin=origin, interpolation="nearest")
            if column:
                ax.imshow(
                    np.ma.masked_less(colour_index[label_maps[column - 1]], 0),
                    cmap=cmap,
                    vmin=-0.5,
                    vmax=max(len(classes), 1) - 0.5,
                    alpha=0.65,
                    aspect=aspect,
                    origin=origin,
                    interpolation="nearest",
                )
            ax.set_title(f"{COLUMNS[column]}: {title}", fontsize=9)
            ax.axis("off")
    handles = [Patch(color=colours[v], label=f"{v}: {class_names[v]}") for v in classes]
    figure.legend(handles=handles, loc="lower center", ncol=max(len(handles), 1), fontsize=9, frameon=False)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    return figure


def write_overlay(
    image_file: Path,
    label_file: Path,
    prediction_file: Path,
    out_png: Path,
    class_names: dict[int, str] | None = None,
) -> Path:
    """Write :func:`overlay_figure` to ``out_png``; returns ``out_png``."""
    import matplotlib.pyplot as plt

    figure = overlay_figure(image_file, label_file, prediction_file, class_names)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=80, bbox_inches="tight")
    plt.close(figure)
    return out_png


def class_names_from_dataset_json(dataset_json: dict) -> dict[int, str]:
    """Label value -> class name of an nnU-Net dataset.json's plain labels (background, ignore and regions left out)."""
    return {
        int(value): name
        for name, value in dataset_json["labels"].items()
        if name not in ("background", "ignore") and isinstance(value, int)
    }
