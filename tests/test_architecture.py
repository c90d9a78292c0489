"""Structure checks: no import cycle among the project's modules; plugins and the main job run bundles through the
public busgen_monai.bundle_run, never through the CLI module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules(pkg_root: Path, pkg: str) -> dict[str, Path]:
    mods = {}
    for f in pkg_root.rglob("*.py"):
        parts = list(f.relative_to(pkg_root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Project modules ``module`` imports (top level or inside functions), resolved to module names."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: None if is_pkg else -1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            names = [f"{name}.{a.name}" if f"{name}.{a.name}" in known else name for a in node.names]
        for name in names:
            while name and name not in known and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in known and name != module:
                out.add(name)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_project_modules():
    mods = _modules(ROOT / "busgen_monai", "busgen_monai")
    graph = {m: _imports(m, f, mods) for m, f in mods.items()}
    assert sum(len(v) for v in graph.values()) > 50  # the parser sees the imports
    assert _cycles(graph) == []
    # the checker finds a cycle when there is one
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_plugins_and_main_job_do_not_import_the_cli_module():
    offenders = []
    files = list((ROOT / "plugins").glob("*/busgen_*/**/*.py")) + [ROOT / "busgen_monai" / "pipeline.py"]
    files += list((ROOT / "benchmarks").glob("*.py"))
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module == "busgen_monai.cli" or
                                                     (node.level and node.module == "cli")):
                offenders.append(str(f.relative_to(ROOT)))
    assert offenders == [], f"import busgen_monai.bundle_run instead of the CLI module: {offenders}"


def _project_imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("busgen_monai"):
            out += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("busgen_monai")]
    return out


def _public(name: str) -> bool:
    from busgen_monai.plugins import PUBLIC_API

    return name == "busgen_monai" or any(name == p or name.startswith(p + ".") for p in PUBLIC_API)


def test_plugins_import_only_the_public_api():
    offenders = []
    for f in (ROOT / "plugins").glob("*/busgen_*/**/*.py"):
        for name in _project_imports(f):
            if not _public(name) or any(part.startswith("_") for part in name.split(".")[1:]):
                offenders.append(f"{f.relative_to(ROOT)}: {name}")
    assert offenders == [], offenders
    assert not _public("busgen_monai.cli") and not _public("busgen_monai.pipeline") and _public("busgen_monai.data.io")


def test_no_test_skips_when_project_code_fails_to_import():
    """A broken plugin or module must fail its tests, not skip them silently."""
    offenders = []
    for f in list((ROOT / "tests").rglob("test_*.py")) + list((ROOT / "plugins").glob("*/tests/test_*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "importorskip" and node.args
                    and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("busgen")):
                offenders.append(f"{f.relative_to(ROOT)}: {node.args[0].value}")
    assert offenders == [], offenders


def test_each_plugin_keeps_its_tests_next_to_it():
    for setup in (ROOT / "plugins").glob("*/setup.cfg"):
        tests = sorted((setup.parent / "tests").glob("test_*.py"))
        assert tests, f"{setup.parent.name} has no tests in {setup.parent / 'tests'}"
        assert not (setup.parent / "tests" / "__init__.py").exists()  # would shadow the top-level tests package
    assert not (ROOT / "tests" / "plugins").exists()


def test_architecture_doc_lists_every_stage_and_public_module():
    from busgen_monai.pipeline import STAGES
    from busgen_monai.plugins import PUBLIC_API

    doc = (ROOT / "docs" / "architecture.md").read_text()
    table = doc.split("<!-- stage-table")[1].split("\n\n")[0]
    assert [s.name for s in STAGES] == [row.split("|")[1].strip() for row in table.splitlines()[3:]
                                        if row.startswith("|")]
    for module in PUBLIC_API:
        assert f"`{module.split('.', 1)[1]}`" in doc, module
