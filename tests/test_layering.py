"""The dependency table of DESIGN.md, checked on the source: every ``import`` of every module, parsed (ast).

| folder | may import |
| knowledge | nothing of ours |  retrieval | knowledge |  generation | nothing |  evaluation | nothing |
| training | generation, evaluation, knowledge, and agents' prompt builder (``agents.prompting``) only |
| agents | knowledge, retrieval, generation, evaluation (never training) |
| curation | agents, generation, evaluation |  clinisynth/ (settings, CLI, API) | anything |

``models/`` (``clinisynth.models``) is shipped data: file locations only. It imports nothing of ours and any
folder may read where the shipped models are. Imports inside functions count the same as top-level ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Top-level folder -> the folders it may import (DESIGN.md). ``clinisynth`` is the user-facing package.
ALLOWED: dict[str, set[str]] = {
    "knowledge": set(),
    "retrieval": {"knowledge"},
    "generation": set(),
    "evaluation": set(),
    "training": {"generation", "evaluation", "knowledge"},
    "agents": {"knowledge", "retrieval", "generation", "evaluation"},
    "curation": {"agents", "generation", "evaluation"},
    "models": set(),
    "clinisynth": {"knowledge", "retrieval", "generation", "evaluation", "training", "agents", "curation", "models"},
}
#: Single modules a folder may import beyond its folders: training's captions come from the agents' prompt builder.
ALLOWED_MODULES = {"training": {"clinisynth.agents.prompting"}}
#: Data anyone may import.
SHARED_DATA = {"models"}
FOLDERS = [folder for folder in ALLOWED if (ROOT / folder).is_dir()]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) if parts[0] == "clinisynth" else ".".join(["clinisynth", *parts])


def module_file(module: str) -> Path | None:
    """The file of a ``clinisynth...`` module, or ``None`` when it is not one of ours (e.g. a class name)."""
    parts = module.split(".")[1:]
    base = ROOT / parts[0] if parts and parts[0] in ALLOWED and parts[0] != "clinisynth" else ROOT / "clinisynth"
    rest = parts[1:] if parts and parts[0] in ALLOWED and parts[0] != "clinisynth" else parts
    for candidate in (base.joinpath(*rest).with_suffix(".py"), base.joinpath(*rest) / "__init__.py"):
        if rest and candidate.is_file() or not rest and candidate.name == "__init__.py" and candidate.is_file():
            return candidate
    return None


def folder_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED and parts[1] != "clinisynth" else "clinisynth"


def imports_of(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every module of ours that ``path`` imports (``from a import b`` gives ``a.b``
    when ``b`` is a module, else ``a``); relative imports resolved; ``importlib.import_module("...")`` too."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.append((node.lineno, child if child.startswith("clinisynth.") and module_file(child) else base))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return [(line, module) for line, module in found if module == "clinisynth" or module.startswith("clinisynth.")]


def sources(folder: str) -> list[Path]:
    return sorted(path for path in (ROOT / folder).rglob("*.py") if "__pycache__" not in path.parts)


def violations(folder: str) -> list[str]:
    bad = []
    for path in sources(folder):
        for line, module in imports_of(path):
            target = folder_of(module)
            if target == folder or target in SHARED_DATA or module in ALLOWED_MODULES.get(folder, set()):
                continue
            if target not in ALLOWED[folder]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module} ({folder} may import "
                           f"{', '.join(sorted(ALLOWED[folder] | ALLOWED_MODULES.get(folder, set()))) or 'nothing of ours'})")
    return bad


def test_the_checker_sees_the_imports_it_must_judge():
    names = {module for path in sources("training") for _, module in imports_of(path)}
    assert "clinisynth.agents.prompting" in names and "clinisynth.generation.text_encoding" in names
    assert any(module.startswith("clinisynth.knowledge") for path in sources("retrieval") for _, module in imports_of(path))
    assert folder_of("clinisynth.settings") == "clinisynth" and folder_of("clinisynth.agents.nodes") == "agents"
    assert set(FOLDERS) >= {"knowledge", "retrieval", "generation", "evaluation", "training", "agents", "clinisynth"}


@pytest.mark.parametrize("folder", FOLDERS)
def test_each_folder_imports_only_what_design_md_allows(folder):
    assert violations(folder) == []


def test_the_modules_training_may_borrow_from_agents_bring_nothing_else_in():
    # What the borrowed module imports, and what that imports, is imported by training too.
    for folder, modules in ALLOWED_MODULES.items():
        for module in modules:
            assert module_file(module) is not None, f"{module} is gone: update ALLOWED_MODULES"
            reached, todo = set(), [module]
            while todo:
                current = todo.pop()
                for line, name in imports_of(module_file(current)):
                    target = folder_of(name)
                    if target == folder_of(module) and name not in reached and module_file(name):
                        reached.add(name)
                        todo.append(name)
                    else:
                        assert target in ALLOWED[folder] | SHARED_DATA | {folder_of(module)}, (
                            f"{current}:{line} imports {name}; {folder} borrows {module}, so it may not")
            assert reached <= {module, "clinisynth.agents.plan"}, (
                f"{module} now brings {sorted(reached)} into {folder}; keep the prompt builder's imports small")


def test_no_import_cycle_between_top_level_folders():
    edges = {folder: {folder_of(module) for path in sources(folder) for _, module in imports_of(path)} - {folder}
             for folder in FOLDERS}
    for start in FOLDERS:
        seen, stack = set(), [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in edges.get(node, ()):
                assert nxt != start, "import cycle: " + " -> ".join([*trail, nxt])
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
