"""ARCHITECTURE.md stays true: every file or folder it names exists, and it stays short."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "ARCHITECTURE.md"


def named_paths(text: str) -> list[str]:
    """Backticked names that look like repository paths (contain a slash or end in .py/.md/.yaml)."""
    names = re.findall(r"`([^`\s]+)`", text)
    return [n for n in names if "/" in n or re.search(r"\.(py|md|yaml)$", n)]


def test_every_path_the_architecture_names_exists() -> None:
    paths = named_paths(DOC.read_text())
    assert len(paths) > 30  # the map names the files, not just the rooms
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert missing == []


def test_the_architecture_stays_under_two_pages() -> None:
    assert len(DOC.read_text().split()) < 1100


def test_no_test_module_imports_from_another_or_from_bench() -> None:
    """Shared test code lives in tests/helpers.py; benchmarks depend on the package, never the reverse."""
    pattern = re.compile(r"^\s*(from|import) (tests\.test_\w+|bench)\b", re.M)
    offenders = {
        path.name: [m.group(0).strip() for m in pattern.finditer(path.read_text())]
        for path in sorted((ROOT / "tests").glob("*.py"))
    }
    assert {name: found for name, found in offenders.items() if found} == {}


ROOMS = ("dataloading", "trainer", "evaluation", "cluster")  # lowest first


def imported_rooms(path: Path) -> set[str]:
    """The rooms ``path`` imports from anywhere in it (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(ROOMS)


def test_imports_only_go_downward() -> None:
    """ARCHITECTURE.md: `cluster/` → `evaluation/` → `trainer/` → `dataloading/`."""
    upward = {
        str(path.relative_to(ROOT)): sorted(room for room in imported_rooms(path) if ROOMS.index(room) > rank)
        for rank, name in enumerate(ROOMS)
        for path in sorted((ROOT / name).rglob("*.py"))
    }
    assert {path: rooms for path, rooms in upward.items() if rooms} == {}
