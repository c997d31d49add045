"""The demo's overlay PNG: MIPs of image, reference and prediction in three views plus one slice, with a legend."""

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_fm.overlay import _label_projection, class_names_from_dataset_json, overlay_figure, write_overlay


def test_label_mip_is_the_per_class_maximum_with_the_highest_class_on_top():
    labels = np.zeros((3, 2, 2), np.uint8)
    labels[0, 0, 0], labels[2, 0, 0] = 1, 2  # both classes on one ray along axis 0
    labels[1, 1, 1] = 1
    labels[1, 0, 1] = 3  # not a named class: not drawn
    np.testing.assert_array_equal(_label_projection(labels, 0, [1, 2]), [[2, 0], [0, 1]])
    np.testing.assert_array_equal(_label_projection(labels, 2, [1, 2]), [[1, 0], [0, 1], [2, 0]])


def _write(path, array, spacing=(0.7, 0.7, 1.5)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def test_overlay_has_three_mip_rows_and_a_slice_row_and_names_the_classes(tmp_path):
    shape = (12, 20, 20)
    labels = np.zeros(shape, np.uint8)
    labels[2:10, 5, 5] = 1
    labels[2:10, 14, 14] = 2
    prediction = labels.copy()
    prediction[:, 14, 14] = 0  # the vein is missed
    image = (labels > 0) * 100.0 + np.random.default_rng(0).normal(0, 5, shape)
    for name, array in (("img.nii.gz", image.astype(np.float32)), ("ref.nii.gz", labels), ("pred.nii.gz", prediction)):
        _write(tmp_path / name, array)
    names = class_names_from_dataset_json({"labels": {"background": 0, "artery": 1, "vein": 2, "ignore": 3}})
    assert names == {1: "artery", 2: "vein"}
    figure = overlay_figure(tmp_path / "img.nii.gz", tmp_path / "ref.nii.gz", tmp_path / "pred.nii.gz", names)
    titles = [ax.get_title() for ax in figure.axes]
    assert len(figure.axes) == 12
    assert titles[:3] == ["image: axial MIP", "reference: axial MIP", "prediction: axial MIP"]
    assert titles[3].startswith("image: coronal") and titles[6].startswith("image: sagittal")
    assert titles[9] == "image: axial slice 2"  # the first slice with the most reference foreground
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["1: artery", "2: vein"]
    # the prediction's axial MIP overlay shows the artery only; the reference's both classes
    reference_mip, prediction_mip = figure.axes[1].images[1].get_array(), figure.axes[2].images[1].get_array()
    assert reference_mip.count() == 2 and prediction_mip.count() == 1
    # coronal panels are drawn at the true aspect (z spacing 1.5 over x spacing 0.7)
    assert figure.axes[4].get_aspect() == pytest.approx(1.5 / 0.7, rel=1e-6)  # NIfTI stores float32
    png = write_overlay(
        tmp_path / "img.nii.gz",
        tmp_path / "ref.nii.gz",
        tmp_path / "pred.nii.gz",
        tmp_path / "o" / "overlay.png",
        names,
    )
    import matplotlib.image

    height, width = matplotlib.image.imread(png).shape[:2]
    assert png.is_file() and width > 600 and height > width  # four rows of three panels
