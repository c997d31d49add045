"""Sentences of the docs that a first-week user acts on, checked against the program (issue 30, item 2)."""

import re
import subprocess
from pathlib import Path

import pytest
import torch

from nnunet_fm import cli
from nnunet_fm.environment import default_device, env_lines
from nnunet_fm.templates import describe_templates, load_template

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "documentation"


def _subcommands(parser) -> list[str]:
    action = next(a for a in parser._subparsers._group_actions if a.choices)
    return list(action.choices)


def test_help_names_every_subcommand():
    parser = cli.build_parser()
    commands = _subcommands(parser)
    assert len(commands) >= 12
    missing = [c for c in commands if not re.search(rf"(?<![\w-]){re.escape(c)}(?![\w-])", parser.description)]
    assert missing == [], f"`nnunet-fm --help`'s description does not name {missing}"


@pytest.mark.parametrize("command", ["pseudolabel", "experiment", "demo"])
def test_every_device_option_follows_one_rule(command, monkeypatch):
    """cuda when available, else cpu: the same default for every command that has --device."""
    parser = cli.build_parser()
    sub = _subcommands_parsers(parser)[command]
    device = next(a for a in sub._actions if "--device" in a.option_strings)
    assert device.default is None and device.help == cli.DEVICE_HELP
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == "cuda"


def _subcommands_parsers(parser) -> dict:
    return next(a for a in parser._subparsers._group_actions if a.choices).choices


def test_env_output_exports_no_placeholder_path(monkeypatch):
    """`eval "$(nnunet-fm env)"` with unset nnU-Net paths must not export /path/to/... (troubleshooting.md)."""
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("nnUNet_results", "/data/results")
    script = (
        "\n".join(env_lines())
        + '\necho "raw=${nnUNet_raw-unset} results=$nnUNet_results ext=${nnUNet_extTrainer:+set}"'
    )
    shell = subprocess.run(["bash", "-c", script], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert shell.stdout.strip() == "raw=unset results=/data/results ext=set", shell.stderr
    assert any(line.startswith("# export nnUNet_raw=/path/to/") for line in env_lines())


def test_recipes_previous_widths_line_is_accepted():
    """recipes.md's "before" widths: --set refine_gate_channels=null skip_gate_channels=null (gates off)."""
    from nnunet_fm.architectures.dinov3_ffa import DINOv3FFA

    line = next(ln for ln in (DOCS / "recipes.md").read_text().splitlines() if ln.startswith("| widths |"))
    settings = dict(kv.split("=") for kv in re.search(r"`--set ([^`]+)`", line).group(1).split())
    assert settings["refine_gate_channels"] == "null" and settings["skip_gate_channels"] == "null"
    options = load_template("dinov3_ffa").network_options()
    values = {key: options[key].check(None if raw == "null" else int(raw), "--set") for key, raw in settings.items()}
    with torch.device("meta"):
        DINOv3FFA(1, 3, **values)  # the network takes them, as plans add's build check does


def test_crops_in_plans_list_match_recipes():
    """K=5, batch 2, 1000 epochs: 3 steps an epoch, 3,000 steps of 2 crops = 6,000 crops (recipes.md, plans list)."""
    listed = describe_templates()
    assert "few_shot_k=5: 3000 steps x batch 2 = 6000 training crops" in listed
    assert "3,000 steps, 6,000 crops" in (DOCS / "recipes.md").read_text()


def test_lightmedseg_description_states_its_budget():
    description = load_template("lightmedseg").description
    assert "passes" not in description and "300 epochs of 250 iterations" in description
    assert "300 epochs x 250 iterations = 75000 optimiser steps" in describe_templates()


def test_experiment_configuration_names_in_the_docs_are_the_programs():
    """Run configurations are the template's configuration name + _k<K>_s<seed> (experiment.run_one)."""
    text = (DOCS / "experiments.md").read_text()
    for name in re.findall(r"`(3d_fm_\w+_k\d+_s\d+)`", text):
        configuration = name.rsplit("_k", 1)[0]
        assert configuration in {load_template(t).configuration for t in ("dinov3_ffa", "unet_fewshot")}, name


def test_troubleshooting_stops_one_process_group_not_every_training():
    text = (DOCS / "troubleshooting.md").read_text()
    assert "kill -TERM -- -" in text
    for line in text.splitlines():
        if "pkill" in line:
            assert "Not `pkill" in line, line


def test_readme_demo_encoder_sentence_matches_the_demo():
    """The demo always trains with the tiny random-weight encoder, whatever --device says."""
    from nnunet_fm.demo import FLAGSHIP

    assert "encoder_weights=none" in FLAGSHIP["set"]
    readme = (ROOT / "README.md").read_text()
    assert "On CPU it uses a tiny" not in readme and "with `--device cuda` alike) a tiny" in readme


def test_quick_start_states_few_shot_k_all_cases_and_the_hub_default():
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "`few_shot_k: 5`" in readme and "`--set few_shot_k=null` trains on all of them" in readme
    assert "means `hub`" in readme and "downloaded from the internet" in readme
    ffa = load_template("dinov3_ffa")
    assert ffa.trainer_class.fm_defaults["few_shot_k"] == 5 and ffa.trainer_options()["encoder_weights"].default is None


def test_licence_and_citation_files_exist_and_agree_with_pyproject():
    import yaml

    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["license"] == "Apache-2.0"
    urls = " ".join(str(r.get("url", "")) + str(r.get("doi", "")) for r in citation["references"])
    for reference in ("2602.23782", "2403.11229", "2603.07228", "2602.23962", "2508.10104", "s41592-020-01008-z"):
        assert reference in urls
    sharing = (DOCS / "sharing.md").read_text()
    for needed in ("nnUNetv2_export_model_to_zip", "nnUNetv2_install_pretrained_model_from_zip", "-num_gpus",
                   "nnUNetv2_find_best_configuration", "DINOv3 License", "@misc{tyagi2026lightmedseg"):  # fmt: skip
        assert needed in sharing
