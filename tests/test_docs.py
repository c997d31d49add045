"""The documentation stays consistent: generated options page current, README short, relative links resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nnunet_fm.templates import load_template, template_names
from nnunet_fm.tools import options_page

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_PAGES = sorted((ROOT / "documentation").glob("*.md"))
_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")


def relative_links(markdown: str) -> list[str]:
    """Targets of the inline links outside code, without web/mail links and in-page anchors."""
    text = _CODE_SPAN.sub("", _FENCE.sub("", markdown))
    targets = [t for t in _LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]
    return [t for t in targets if not t.startswith("#")]


def broken_links(page: Path) -> list[str]:
    """Relative link targets of ``page`` (anchor dropped) that name no existing file or folder."""
    return [t for t in relative_links(page.read_text()) if not (page.parent / t.split("#", 1)[0]).exists()]


@pytest.fixture(scope="module")
def rendered_page() -> str:
    return options_page.render_options_page()


def test_options_page_is_current(rendered_page: str) -> None:
    committed = options_page.PAGE.read_text() if options_page.PAGE.exists() else ""
    assert committed == rendered_page, f"documentation/options.md is out of date; run: {options_page.REGENERATE}"


def test_options_page_has_a_row_for_every_option_of_every_template(rendered_page: str) -> None:
    sections = re.split(r"^## ", rendered_page, flags=re.M)
    by_name = {s.split("\n", 1)[0].strip(): s for s in sections}
    for name in template_names():
        template = load_template(name)
        keys = set(template.trainer_options()) | set(template.network_options())
        assert keys, name
        missing = [k for k in sorted(keys) if f"| `{k}` |" not in by_name[name]]
        assert not missing, f"{name}: no table row for {missing}"
    assert "| `batch_dice` |" in by_name["Structural keys"]


def test_check_fails_on_a_stale_page_and_passes_after_regenerating(tmp_path: Path, capsys) -> None:
    page = tmp_path / "options.md"
    page.write_text("# stale\n")
    assert options_page.main(["--check", "--page", str(page)]) == 1
    assert options_page.REGENERATE in capsys.readouterr().err
    assert options_page.main(["--page", str(page)]) == 0
    assert options_page.main(["--check", "--page", str(page)]) == 0


def test_readme_is_under_150_lines() -> None:
    assert len(README.read_text().splitlines()) < 150


def test_link_checker_finds_a_broken_link(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("x")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md#a) [gone](missing.md) [web](https://example.org/x.md) [anchor](#top)\n"
        "`[code](nope.md)`\n```\n[block](nope2.md)\n```\n"
    )
    assert broken_links(page) == ["missing.md"]


@pytest.mark.parametrize("page", [README, *DOC_PAGES], ids=lambda p: p.name)
def test_relative_links_point_to_existing_files(page: Path) -> None:
    assert not broken_links(page), f"{page.name}: broken links {broken_links(page)}"


def test_readme_links_every_documentation_page() -> None:
    linked = {(README.parent / t.split("#", 1)[0]).resolve() for t in relative_links(README.read_text())}
    expected = {
        "plans.md",
        "options.md",
        "recipes.md",
        "semi_supervised.md",
        "experiments.md",
        "evaluation.md",
        "troubleshooting.md",
        "extending.md",
    }
    assert expected <= {p.name for p in DOC_PAGES}
    assert {p.resolve() for p in DOC_PAGES} <= linked
    assert (ROOT / "BENCHMARKS.md").resolve() in linked
