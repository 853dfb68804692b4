"""The documentation: a README that is a front door, docs/ pages it links, links that resolve,
and a command reference that lists every command and option the CLI has."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import click
import pytest
import typer

from search.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")


def reference_module():
    spec = importlib.util.spec_from_file_location("reference", ROOT / "docs" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def test_readme_is_a_front_door():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 300
    assert not (ROOT / "README.md.orig").exists()


def test_every_docs_page_is_linked_from_the_readme():
    linked = {target.split("#")[0] for target in LINK.findall(README.read_text(encoding="utf-8"))}
    assert [p.name for p in DOCS if f"docs/{p.name}" not in linked] == []


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
def test_links_resolve(page: Path):
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # an address elsewhere
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        assert dest.exists(), f"{page.name}: {target} points nowhere"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{page.name}: no heading #{anchor} in {dest.name}"


def test_the_command_reference_is_current():
    ref = reference_module()
    current = ref.DOC.read_text(encoding="utf-8")
    assert ref.render(current) == current, "docs/commands.md is stale: run `python docs/reference.py`"


def test_every_command_and_option_is_in_the_reference():
    text = (ROOT / "docs" / "commands.md").read_text(encoding="utf-8")
    root = typer.main.get_command(app)
    ctx = click.Context(root, info_name="review-search")
    for name in root.list_commands(ctx):
        assert f"### `review-search {name}`" in text, name
        for p in root.get_command(ctx, name).params:
            for opt in p.opts if p.param_type_name == "option" else []:
                assert f"`{opt}`" in text, f"{name} {opt}"
