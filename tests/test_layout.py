"""The shape the code promises its readers: imports flow one way (no cycle, lazy imports
included), no module past what a reader takes in at once, a training loop without
per-method branches, `Run` built by keyword, and a README that is a front door whose
links resolve."""

import ast
import re
from pathlib import Path

from helpers import ROOT

PACKAGE = ROOT / "pmc_min"


def imports_of(path: Path) -> set[str]:
    """The pmc_min modules a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pmc_min."):
            found.add(node.module.split(".")[1])
    return found


def test_no_import_cycle_among_pmc_mins_modules():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    graph = {m: imports_of(PACKAGE / f"{m}.py") & modules for m in modules}
    done, active = set(), []

    def visit(m):
        assert m not in active, f"import cycle: {' -> '.join(active[active.index(m):] + [m])}"
        if m in done:
            return
        active.append(m)
        for d in sorted(graph[m]):
            visit(d)
        active.pop()
        done.add(m)

    for m in sorted(modules):
        visit(m)


def test_no_module_is_longer_than_a_reader_takes_in():
    lengths = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert max(lengths.values()) <= 350, sorted(lengths.items(), key=lambda kv: -kv[1])[:3]
    assert lengths["train.py"] <= 300


def test_the_unlearning_loop_has_no_per_method_branch():
    tree = ast.parse((PACKAGE / "train.py").read_text())
    (unlearn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "unlearn"]
    for node in ast.walk(unlearn):
        if isinstance(node, ast.Compare):
            names = [n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)]
            assert "method" not in names, ast.unparse(node)


def test_run_is_built_by_keyword():
    files = [*PACKAGE.glob("*.py"), ROOT / "run.py", *(ROOT / "tests").rglob("*.py")]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Run":
                assert not node.args, f"{path.name}: {ast.unparse(node)}"


def test_the_readme_is_a_front_door_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    links = re.findall(r"\]\(((?:docs|tests|pmc_min|theory)/[^)#\s]+)", readme)
    assert len(links) >= 9  # the docs index
    for link in links:
        assert (ROOT / link).exists(), link
    for page in (ROOT / "docs").glob("*.md"):
        for link in re.findall(r"\]\((?!https?:)([^)#\s]+)", page.read_text()):
            assert (page.parent / link).exists(), f"{page.name}: {link}"
