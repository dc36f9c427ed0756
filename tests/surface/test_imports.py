"""The import graph of the package, read from the source (ast): one-way layers and no circles.

Rules (DESIGN.md, "Layers and wings"):
* the core never imports a plugin module (it asks the registry);
* a plugin imports only ``plugformer.core`` (never another plugin, the package root or the CLI);
* the interfaces (``core/interfaces/``) import only each other and ``core.errors``;
* no module of the core imports the package root (``plugformer``) or the command line;
* the model wing does not import the engine's fast path or the loader: they are handed in;
* the quantized-matmul kernels read a layer's layout, not the layer class;
* no import circles, counting imports inside functions too (only ``TYPE_CHECKING`` blocks are
  left out: they never run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = ["plugformer", *rel.parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    files = [ROOT / "__init__.py", ROOT / "__main__.py"]
    for top in ("core", "plugins"):
        files += sorted((ROOT / top).rglob("*.py"))
    return {_module_name(p): p for p in files}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The plugformer modules ``path`` imports (``from a import b`` counts ``a.b`` when ``b``
    is a module)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("plugformer"))
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").startswith("plugformer")
        ):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else str(node.module))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _graph() -> dict[str, set[str]]:
    sources = _sources()
    names = set(sources)
    return {m: _imports(p, names) & names for m, p in sources.items()}


GRAPH = _graph()


def _violations(src_prefix: str, allowed: tuple[str, ...], exempt: tuple[str, ...] = ()):
    bad = []
    for mod, deps in GRAPH.items():
        if not (mod == src_prefix or mod.startswith(src_prefix + ".")) or mod in exempt:
            continue
        for dep in sorted(deps):
            if not any(dep == a or dep.startswith(a + ".") for a in allowed):
                bad.append(f"{mod} -> {dep}")
    return bad


def test_the_walk_sees_the_package():
    assert "plugformer.core.engine" in GRAPH and "plugformer.plugins.attention.gqa" in GRAPH
    assert "plugformer.core.interfaces.attention" in GRAPH["plugformer.core.builder"]


def test_the_core_never_imports_a_plugin():
    bad = [f"{m} -> {d}" for m, ds in GRAPH.items() if m.startswith("plugformer.core") for d in ds
           if d.startswith("plugformer.plugins")]  # fmt: skip
    assert bad == []


def test_plugins_import_only_the_core():
    assert _violations("plugformer.plugins", ("plugformer.core",)) == []
    top = ("plugformer.core.cli", "plugformer.core.commands", "plugformer.core.engine",
           "plugformer.core.builder")  # fmt: skip
    cli = [f"{m} -> {d}" for m, ds in GRAPH.items() if m.startswith("plugformer.plugins")
           for d in ds if d.startswith(top)]  # fmt: skip
    assert cli == []


def test_interfaces_import_only_interfaces_and_errors():
    allowed = ("plugformer.core.interfaces", "plugformer.core.errors")
    assert _violations("plugformer.core.interfaces", allowed) == []


def test_the_core_does_not_import_the_package_root_or_the_command_line():
    bad = []
    for mod, deps in GRAPH.items():
        if not mod.startswith("plugformer.core") or mod.startswith(
            ("plugformer.core.cli", "plugformer.core.commands")
        ):
            continue
        bad += [f"{mod} -> {d}" for d in deps if d == "plugformer"]
        cli = ("plugformer.core.cli", "plugformer.core.commands")
        bad += [f"{mod} -> {d}" for d in deps if d.startswith(cli)]
    assert bad == []


def test_lower_wings_do_not_reach_up():
    assert "plugformer.core.model.decode_step" not in GRAPH["plugformer.core.model.decoder"]
    for mod in ("plugformer.core.model.build", "plugformer.core.model.decoder"):
        assert not {"plugformer.core.loader", "plugformer.core.engine"} & GRAPH[mod], mod
    for mod in ("plugformer.core.quant.kernels", "plugformer.core.quant.triton_matmul"):
        assert "plugformer.core.quant.linear" not in GRAPH[mod], mod
    assert "plugformer.core.tokenizers.hf" not in GRAPH["plugformer.core.interfaces.tokenizer"]
    up = ("plugformer.core.engine", "plugformer.core.builder")
    for wing in ("model", "quant", "checkpoints", "tokenizers", "parallel", "native"):
        bad = [d for m, ds in GRAPH.items() if m.startswith(f"plugformer.core.{wing}")
               for d in ds if d in up]  # fmt: skip
        assert bad == [], wing


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                strong(w)
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
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            strong(v)
    return out


def test_no_import_circles():
    # a package's __init__ re-exporting its own modules is not a circle of behaviour: the
    # package ``plugformer.core`` re-exports the interfaces, and they import nothing back
    cycles = _cycles()
    assert cycles == []


def test_the_public_names_load_lazily_and_all_resolve():
    """``import plugformer`` and ``import plugformer.core`` import no torch (the CLI's help
    stays fast); every name of their ``__all__`` then resolves, and ``__all__`` is complete."""
    code = (
        "import sys, plugformer, plugformer.core as core; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert sorted(plugformer.__all__) == sorted(['CONTRACT_VERSION', '__version__', "
        "'hookimpl', *plugformer._LAZY]); "
        "[getattr(plugformer, n) for n in plugformer.__all__]; "
        "[getattr(core, n) for n in core.__all__]; "
        "assert 'AttentionConfig' in core.__all__ and 'AttentionConfig' in dir(core)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
