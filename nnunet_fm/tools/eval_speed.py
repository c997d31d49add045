"""Wall-clock of ``nnunet-fm evaluate`` against ``nnUNetv2_evaluate_folder`` on the same synthetic vessel cases.

``python -m nnunet_fm.tools.eval_speed [--cases 20] [--shape 200 256 256] [-np 2] [--workdir DIR]`` writes
``--cases`` reference / prediction pairs (``--shape`` is the (z, y, x) array shape; three classes of branching
tubes, radius 1-3 voxels, in the middle of the volume like a circle of Willis in a head scan; the prediction
has gaps, thickness errors and a spurious branch), then times each command once on them with the same ``-np``
(nnU-Net first, then ``nnunet-fm evaluate`` in both conventions) and prints a Markdown table with the ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_CLASSES = 3


def _ball(radius: int) -> np.ndarray:
    """Integer offsets of a ball of ``radius`` voxels."""
    r = np.arange(-radius, radius + 1)
    offsets = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    return offsets[(offsets**2).sum(1) <= radius**2]


def _walk(rng: np.random.Generator, start: np.ndarray, steps: int) -> np.ndarray:
    """A smooth random walk of ``steps`` unit steps from ``start`` (float points)."""
    direction = rng.normal(size=3)
    points = [start.astype(float)]
    for _ in range(steps):
        direction = direction / np.linalg.norm(direction) + rng.normal(scale=0.25, size=3)
        points.append(points[-1] + direction / np.linalg.norm(direction))
    return np.asarray(points)


def _tree(rng: np.random.Generator, centre: np.ndarray) -> list[np.ndarray]:
    """A trunk with three side branches, as point lists."""
    trunk = _walk(rng, centre, 120)
    return [trunk] + [_walk(rng, trunk[rng.integers(10, 110)], 50) for _ in range(3)]


def _draw(volume: np.ndarray, points: np.ndarray, radius: int, label: int) -> None:
    """Paint balls of ``radius`` around ``points`` (clipped to the volume) with ``label``."""
    centres = np.round(points).astype(int)
    voxels = (centres[:, None, :] + _ball(radius)[None]).reshape(-1, 3)
    voxels = voxels[((voxels >= 0) & (voxels < volume.shape)).all(1)]
    volume[tuple(voxels.T)] = label


def synthetic_case(seed: int, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One (reference, prediction) pair of uint8 label maps with classes 1..3."""
    rng = np.random.default_rng(seed)
    ref, pred = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    middle = np.asarray(shape) / 2
    for label in range(1, N_CLASSES + 1):
        radius = 1 + (label % 3)
        for branch in _tree(rng, middle + rng.normal(scale=10, size=3)):
            _draw(ref, branch, radius, label)
            keep = np.ones(len(branch), bool)
            start = rng.integers(0, max(len(branch) - 8, 1))
            keep[start : start + 6] = False  # a gap
            jitter = rng.normal(scale=0.4, size=branch.shape)
            _draw(pred, branch[keep] + jitter[keep], max(radius - int(rng.integers(0, 2)), 1), label)
        _draw(pred, _walk(rng, middle + rng.normal(scale=20, size=3), 30), 1, label)  # a false branch
    return ref, pred


def write_cases(workdir: Path, n_cases: int, shape: tuple[int, int, int]) -> tuple[Path, Path, Path, Path]:
    """Reference and prediction folders, dataset.json and plans.json under ``workdir``."""
    import SimpleITK as sitk

    ref_dir, pred_dir = workdir / "labelsTs", workdir / "predictions"
    ref_dir.mkdir(parents=True, exist_ok=True)
    pred_dir.mkdir(parents=True, exist_ok=True)
    for case in range(n_cases):
        for folder, array in zip((ref_dir, pred_dir), synthetic_case(case, shape)):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing((0.4, 0.4, 0.5))
            sitk.WriteImage(image, str(folder / f"case_{case:03d}.nii.gz"), useCompression=True)
    dataset_json, plans_json = workdir / "dataset.json", workdir / "plans.json"
    labels = {"background": 0, **{f"vessel{i}": i for i in range(1, N_CLASSES + 1)}}
    dataset_json.write_text(json.dumps({"labels": labels, "file_ending": ".nii.gz", "channel_names": {"0": "CT"}}))
    plans_json.write_text(json.dumps({"dataset_name": "Dataset999_Speed", "plans_name": "nnUNetPlans"}))
    return ref_dir, pred_dir, dataset_json, plans_json


def _timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Write the cases, time both commands, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--shape", type=int, nargs=3, default=(200, 256, 256), help="array shape (z, y, x)")
    parser.add_argument("-np", type=int, default=2, help="worker processes for both commands")
    parser.add_argument("--workdir", default=None, help="where to write the cases (default: a temporary folder)")
    args = parser.parse_args(argv)
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        ref_dir, pred_dir, dataset_json, plans_json = write_cases(workdir, args.cases, tuple(args.shape))
        common = [str(ref_dir), str(pred_dir), "-djfile", str(dataset_json), "-pfile", str(plans_json)]
        common += ["-np", str(args.np)]
        runs = {
            "nnUNetv2_evaluate_folder": [str(bin_dir / "nnUNetv2_evaluate_folder"), *common],
            "nnunet-fm evaluate (nnunet)": [str(bin_dir / "nnunet-fm"), "evaluate", *common],
            "nnunet-fm evaluate --conventions topcow": [
                str(bin_dir / "nnunet-fm"),
                "evaluate",
                *common,
                "--conventions",
                "topcow",
            ],
        }
        seconds = {}
        for name, command in runs.items():
            command += ["-o", str(workdir / f"summary_{len(seconds)}.json")]
            seconds[name] = _timed(command)
    base = seconds["nnUNetv2_evaluate_folder"]
    print(f"{args.cases} cases of {tuple(args.shape)} (z, y, x), {N_CLASSES} classes, -np {args.np}\n")
    print("| command | seconds | ratio to nnU-Net |\n|---|---|---|")
    for name, value in seconds.items():
        print(f"| {name} | {value:.1f} | {value / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
