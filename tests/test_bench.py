"""Tests for the benchmark's core (``nnunet_fm.tools.bench``) on a tiny setting: random tiny ViT, CPU, 1 thread."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_fm.network_interfaces import count_parameters
from nnunet_fm.tools import bench

torch.set_num_threads(1)

TINY_ENCODER = {"embed_dim": 32, "depth": 2, "num_heads": 2}
MODELS = ("unet", "ffa-s", "cube", "lightmedseg")
COLUMNS = ["model", "trainable params", "frozen params", "GFLOP fwd/patch", "step s", "step x stock"]
COLUMNS += ["peak mem MiB", "mem x stock", "saved act MiB", "saved x stock", "predict s", "predict x stock"]


def tiny_config(**kw) -> bench.BenchConfig:
    base = {
        "patch": (4, 32, 32),
        "repeats": 1,
        "models": MODELS,
        "encoder_kwargs": dict(TINY_ENCODER),
        "taps": (0, 1, 1),
        "agg_heads": 2,
        "predict_volume": (4, 48, 48),
    }
    return bench.BenchConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def result() -> bench.BenchResult:
    return bench.run_benchmark(tiny_config(), argv=["--patch", "4", "32", "32"])


def row(result: bench.BenchResult, name: str) -> bench.Row:
    return next(r for r in result.rows if r.name == name)


def test_table_rows_and_columns(result: bench.BenchResult) -> None:
    assert [r.name for r in result.rows] == list(MODELS)
    for name in ("unet", "ffa-s", "cube"):
        r = row(result, name)
        assert r.status == "ok", r.status
        assert r.flops > 0 and r.step_s > 0 and r.saved_bytes > 0 and r.predict_s > 0
        assert r.step_min_s <= r.step_s <= r.step_max_s
    text = bench.format_report(result)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("model "))
    for column in COLUMNS:
        assert column in header
    for r in result.rows:
        assert sum(line.startswith(r.label) for line in lines) == 1
    assert "python -m nnunet_fm.tools.bench --patch 4 32 32" in text
    assert "random" in text and "torch:" in text and "cpu:" in text

    md = bench.format_report(result, markdown=True).splitlines()
    table = [line for line in md if line.startswith("|")]
    assert len(table) == 2 + len(MODELS)
    assert len({line.count("|") for line in table}) == 1
    assert table[0].count("|") == len(COLUMNS) + 2  # + "step min-max s"


def test_stock_ratios_are_one(result: bench.BenchResult) -> None:
    stock = row(result, "unet")
    for key in ("step_s", "saved_bytes", "predict_s"):
        assert stock.ratios[key] == 1.0
    assert stock.ratios["peak_bytes"] in (1.0, None)  # None only if the RSS did not grow
    ffa = row(result, "ffa-s")
    assert ffa.ratios["step_s"] == pytest.approx(ffa.step_s / stock.step_s)


@pytest.mark.parametrize("name", ["ffa-s", "cube"])
def test_frozen_params_are_the_encoder(result: bench.BenchResult, name: str) -> None:
    r = row(result, name)
    model = bench.build_model(name, tiny_config())
    encoder = sum(p.numel() for p in model.encoder.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert r.frozen == encoder > 0
    assert r.trainable == total - encoder > 0


def test_stock_unet_params(result: bench.BenchResult) -> None:
    r = row(result, "unet")
    model = bench.build_model("unet", tiny_config())
    assert type(model).__name__ == "PlainConvUNet"
    assert r.frozen == 0
    assert r.trainable == sum(p.numel() for p in model.parameters()) > 0


def test_lightmedseg_row_is_skipped_with_the_reason(result: bench.BenchResult) -> None:
    """D = 4 is not divisible by LightMedSeg's 16: a row naming why, no numbers, and the other rows still measured."""
    r = row(result, "lightmedseg")
    assert r.status == "skipped (patch [4, 32, 32]: every size must be divisible by 16)"
    assert r.trainable is None and r.flops is None and r.step_s is None
    assert any(line.startswith(r.label) and r.status in line for line in bench.format_report(result).splitlines())
    ok = bench.measure_model("lightmedseg", tiny_config(patch=(16, 32, 32), predict_volume=None), torch.device("cpu"))
    assert ok.status == "ok" and ok.trainable > 0 and ok.step_s > 0


def test_import_error_gives_unavailable_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nnunet_fm.architectures.lightmedseg", None)
    r = bench.measure_model("lightmedseg", tiny_config(), torch.device("cpu"))
    assert r.status.startswith("unavailable (import error:")
    assert r.label in bench.format_report(bench.BenchResult(tiny_config(), [r], {}, "cmd", "now"))


def test_default_architecture_is_what_the_planner_derives() -> None:
    assert bench.planner_architecture(bench.DEFAULT_PATCH) == bench.DEFAULT_ARCHITECTURE
    assert bench.planner_architecture((4, 32, 32))["arch_kwargs"]["n_stages"] == 4


def test_split_cubes() -> None:
    sizes = [bench.split_cubes((16, 64, 64), n) for n in (1, 2, 4, 8)]
    assert sizes == [(16, 64, 64), (16, 32, 64), (16, 32, 32), (8, 32, 32)]
    assert bench.split_cubes((4, 32, 32), 2) == (2, 32, 32)
    assert bench.split_cubes((1, 32, 32), 2) is None


def test_cube_sweep_two_pass_saves_less() -> None:
    rows, res = bench.run_cube_sweep(tiny_config(predict_volume=None), counts=(1, 2))
    assert [r.status for r in rows] == ["ok", "ok"]
    assert rows[1].saved_bytes["two-pass"] < rows[1].saved_bytes["ordinary"]
    text = bench.format_sweep(rows, res, markdown=True)
    assert text.count("\n|") == 4


def test_main_with_plans(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    plans = {
        "dataset_name": "Dataset999_Tiny",
        "plans_name": "nnUNetPlans",
        "configurations": {"3d_fullres": {"patch_size": [4, 32, 32], "batch_size": 2}},
    }
    plans["configurations"]["3d_fullres"]["architecture"] = bench.planner_architecture((4, 32, 32))
    (tmp_path / "nnUNetPlans.json").write_text(json.dumps(plans))
    labels = {"background": 0, "a": 1, "b": 2}
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT", "1": "MR"}, "labels": labels}))
    argv = ["--plans", str(tmp_path / "nnUNetPlans.json"), "--models", "unet", "--repeats", "1", "--markdown"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "input channels 2, classes 3" in out and "patch (D, H, W): [4, 32, 32]" in out
    assert "| nnU-Net PlainConvUNet (stock) | " in out and "| 1.00x |" in out


def test_prediction_goes_through_nnunet_predictor(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    settings = []
    original = nnUNetPredictor.predict_sliding_window_return_logits

    def counting(self: nnUNetPredictor, input_image: torch.Tensor) -> torch.Tensor:
        settings.append(
            (self.tile_step_size, self.use_mirroring, self.allowed_mirroring_axes, self.perform_everything_on_device)
        )
        out = original(self, input_image)
        calls.append((tuple(input_image.shape), tuple(out.shape)))
        return out

    monkeypatch.setattr(nnUNetPredictor, "predict_sliding_window_return_logits", counting)
    cfg = tiny_config(repeats=2, num_classes=3)
    model = bench.build_model("unet", cfg)
    seconds = bench.time_prediction("unet", model, cfg, torch.device("cpu"))
    assert seconds > 0 and model.training
    # one warm-up call on a single tile, then one call per repeat on the whole volume
    assert calls == [((1, 4, 32, 32), (3, 4, 32, 32))] + [((1, 4, 48, 48), (3, 4, 48, 48))] * 2
    assert set(settings) == {(0.5, False, None, False)}
    assert not hasattr(bench, "sliding_window_predict")


@pytest.mark.parametrize("name", ["ffa-s", "cube", "lightmedseg"])
def test_plugin_model_is_what_its_trainer_builds(name: str) -> None:
    from nnunet_fm.ext_trainers import nnunet_fm_trainers

    cfg = tiny_config(patch=(16, 32, 32)) if name == "lightmedseg" else tiny_config()
    trainer = getattr(nnunet_fm_trainers, bench.TRAINERS[name])
    assert trainer.fm_network == bench.NETWORK_CLASSES[name]
    arch_kwargs = {
        "ffa-s": {"encoder": "vit_small_patch16_dinov3", "encoder_kwargs": TINY_ENCODER, "vit_amp": False},
        "cube": {"encoder": "vit_small_patch16_dinov3", "encoder_kwargs": TINY_ENCODER, "vit_amp": False},
        "lightmedseg": {},
    }[name]
    if name != "lightmedseg":
        arch_kwargs["taps"] = [0, 1, 1]
    if name == "ffa-s":
        arch_kwargs["agg_heads"] = 2
    conf = {
        "patch_size": list(cfg.patch),
        "architecture": {
            "network_class_name": trainer.fm_network,
            "arch_kwargs": arch_kwargs,
            "_kw_requires_import": [],
        },
    }
    by_trainer = trainer.build_network_architecture(
        PlansManager({"configurations": {"c": conf}}), ConfigurationManager(conf), 1, 2, enable_deep_supervision=False
    )
    by_bench = bench.build_model(name, cfg)
    assert type(by_bench) is type(by_trainer)
    assert count_parameters(by_bench) == count_parameters(by_trainer)
    shapes = {k: v.shape for k, v in by_trainer.state_dict().items()}
    assert {k: v.shape for k, v in by_bench.state_dict().items()} == shapes
