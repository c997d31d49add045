"""Set-up that fails early with the fix (scripts/setup.sh), stays green (ruff pinned) and stays quiet (doctor)."""

import re
import shutil
import subprocess
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _fake_python(folder: Path, version: str, has_venv: bool) -> Path:
    """An interpreter stand-in answering setup.sh's three questions: version check, version text, venv import."""
    path = folder / "fakepython"
    venv_status = 0 if has_venv else 1
    major, minor = (int(v) for v in version.split("."))
    too_old = 1 if (major, minor) < (3, 10) else 0
    path.write_text(
        "#!/bin/sh\n"
        'case "$2" in\n'
        f'  *"< (3, 10)"*) exit {too_old} ;;\n'
        f"  *print*) echo {version} ;;\n"
        f"  *venv*) exit {venv_status} ;;\n"
        "  *) touch CREATED_SOMETHING ;;\n"
        "esac\n"
    )
    path.chmod(0o755)
    return path


def _setup(tmp_path: Path, python: str) -> subprocess.CompletedProcess:
    """scripts/setup.sh in an empty checkout (no .venv), with PYTHON=python."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    return subprocess.run(
        ["bash", "scripts/setup.sh"], cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "PYTHON": python},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_setup_refuses_an_old_python_before_creating_the_venv(tmp_path):
    result = _setup(tmp_path, str(_fake_python(tmp_path, "3.8", has_venv=True)))
    assert result.returncode == 2
    assert "needs Python >= 3.10" in result.stderr and "is 3.8" in result.stderr
    assert "PYTHON=python3.X bash scripts/setup.sh" in result.stderr
    assert not (tmp_path / ".venv").exists() and not (tmp_path / "CREATED_SOMETHING").exists()


def test_setup_names_python3_venv_when_venv_is_missing(tmp_path):
    result = _setup(tmp_path, str(_fake_python(tmp_path, "3.12", has_venv=False)))
    assert result.returncode == 2
    assert "apt install python3-venv" in result.stderr and "python3.12-venv" in result.stderr
    assert not (tmp_path / ".venv").exists() and not (tmp_path / "CREATED_SOMETHING").exists()


def test_setup_names_a_missing_interpreter(tmp_path):
    result = _setup(tmp_path, "python3.99-nowhere")
    assert result.returncode == 2 and "'python3.99-nowhere' not found" in result.stderr


def test_setup_documents_the_python_variable():
    header = (ROOT / "scripts" / "setup.sh").read_text().splitlines()[:4]
    assert any("PYTHON=" in line for line in header)


def test_ruff_is_pinned_to_one_minor_version_that_is_installed():
    """A new ruff release (new rules, new formatting) cannot turn a fresh scripts/test.sh red."""
    # (tomllib is Python >= 3.11; the project supports 3.10)
    extra = re.search(r"^test = \[(.*?)^\]$", (ROOT / "pyproject.toml").read_text(), re.MULTILINE | re.DOTALL)
    entries = re.findall(r'^\s*"([^"]+)",', extra.group(1), re.MULTILINE)
    ruff = next(Requirement(r) for r in entries if Requirement(r).name == "ruff")
    upper = [s for s in ruff.specifier if s.operator == "<"]
    lower = [s for s in ruff.specifier if s.operator == ">="]
    assert len(upper) == 1 and len(lower) == 1, ruff
    low, high = Version(lower[0].version), Version(upper[0].version)
    assert (high.major, high.minor) == (low.major, low.minor + 1) and high.micro == 0, ruff
    installed = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "ruff"), "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    if installed:  # the checkout's own .venv (scripts/test.sh made it): it must satisfy the pin
        assert Version(installed[-1]) in ruff.specifier


def test_doctor_trainer_lookup_prints_nothing(monkeypatch, capsys):
    """nnU-Net's "Trainer ... not found ... Searching in:" lines stay out of `nnunet-fm doctor`'s report."""
    from nnunet_fm import doctor
    from nnunet_fm.environment import EXT_TRAINER_VARIABLE, shim_folder

    monkeypatch.setenv(EXT_TRAINER_VARIABLE, str(shim_folder()))
    checks = doctor.check_trainers_resolve()
    assert checks and all(c.ok for c in checks)
    assert capsys.readouterr().out == ""
