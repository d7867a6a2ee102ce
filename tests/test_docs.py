"""Runs the Python examples of the README and of docs/*.md, so the documentation cannot rot.

Every ```python block of a page runs, in order, in one namespace per page. A block preceded by a line
`<!-- not-run: reason -->` is skipped (it needs the Hub, a GPU, ...); the reason is required.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!--\s*not-run:(?P<reason>[^>]*)-->\s*\n)?```python\n(?P<code>.*?)```", re.DOTALL)


def runnable_blocks(page: Path) -> list[str]:
    blocks = []
    for match in BLOCK.finditer(page.read_text(encoding="utf-8")):
        if match.group("reason") is not None:
            assert match.group("reason").strip(), f"{page.name}: a not-run block needs a reason"
            continue
        blocks.append(match.group("code"))
    return blocks


@pytest.mark.parametrize("page", [p for p in PAGES if p.exists()], ids=lambda p: p.name)
def test_examples_run(page, tmp_path, monkeypatch):
    blocks = runnable_blocks(page)
    if not blocks:
        pytest.skip(f"{page.name} has no runnable example")
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for number, code in enumerate(blocks, 1):
        try:
            exec(compile(code, f"{page.name}[block {number}]", "exec"), namespace)  # noqa: S102 - running our docs is the test
        except Exception as error:
            raise AssertionError(f"{page.name}, python block {number} failed: {error!r}\n{code}") from error


def test_the_readme_test_command_is_what_ci_runs():
    """The README promises that its test command is CI's: the two must not drift apart."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = next(line for line in ci.splitlines() if line.startswith("bash scripts/setup.sh"))
    assert command in readme.splitlines(), command
    assert "ruff check ." in command and "pytest" in command
