#!/usr/bin/env python3
"""Fails when the modules of a Rust crate or a Python package import each other in a cycle.

    scripts/check-import-cycles.py [--graph] PATH...

Each PATH is a Rust crate's ``src`` folder or a Python package folder. The
graph is read from the source text, every import counted wherever it stands
(a function-level import, or one under ``if TYPE_CHECKING:``, hides a cycle
from the interpreter but not from a reader):

- Rust: the crate's top-level modules (``src/x.rs`` or ``src/x/``) are the
  nodes, and ``crate::x`` anywhere in a module's files is an edge to ``x``;
  within a module folder the sibling files are nodes too, with ``super::y``
  and ``crate::x::y`` as edges. ``lib.rs`` and ``mod.rs`` declare and
  re-export their children, so their edges to children are not counted.
- Python: every module of the package is a node, and ``from .y import``,
  ``from . import y`` and ``import package.y`` are edges. ``__init__.py``
  re-exports and is left out.

Prints each cycle found (or the whole graph with ``--graph``) and exits 1
when there is one.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable
from pathlib import Path

Graph = dict[str, set[str]]

_RUST_CRATE_PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)(?:::([a-z_][a-z0-9_]*))?")
_RUST_SUPER_PATH = re.compile(r"\bsuper::([a-z_][a-z0-9_]*)")
_RUST_COMMENT = re.compile(r"//.*")


def rust_graph(src: Path) -> Graph:
    """Top-level modules of a crate, and the files of each module folder."""
    graph: Graph = {}
    modules = {p.stem for p in src.glob("*.rs") if p.stem not in ("lib", "main")}
    modules |= {p.name for p in src.iterdir() if p.is_dir()}
    for module in sorted(modules):
        folder = src / module
        files = [src / f"{module}.rs"] if not folder.is_dir() else sorted(folder.rglob("*.rs"))
        children = {p.stem for p in folder.glob("*.rs") if p.stem != "mod"} if folder.is_dir() else set()
        graph.setdefault(module, set())
        for file in files:
            text = _RUST_COMMENT.sub("", file.read_text())
            node = module if file.stem == "mod" or file.parent == src else f"{module}::{file.stem}"
            graph.setdefault(node, set())
            for target, inner in _RUST_CRATE_PATH.findall(text):
                if target not in modules:
                    continue
                if target != module:
                    graph[module].add(target)
                elif inner in children and node != f"{module}::{inner}" and file.stem != "mod":
                    graph[node].add(f"{module}::{inner}")
            if file.parent != src and file.stem != "mod":
                for sibling in _RUST_SUPER_PATH.findall(text):
                    if sibling in children and sibling != file.stem:
                        graph[node].add(f"{module}::{sibling}")
    return graph


def python_graph(package: Path) -> Graph:
    """Every module of a package and the package modules it imports."""
    name = package.name
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    graph: Graph = {module: set() for module in modules}
    for module in modules:
        tree = ast.parse((package / f"{module}.py").read_text())
        for node in ast.walk(tree):
            targets: Iterable[str] = ()
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level == 1 or (node.level == 0 and base.split(".")[0] == name):
                    inner = base.split(".")[1 if node.level == 0 else 0] if base else ""
                    if node.level == 0 and "." not in base:
                        inner = ""
                    targets = [inner] if inner else [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [
                    alias.name.split(".")[1]
                    for alias in node.names
                    if alias.name.startswith(f"{name}.")
                ]
            graph[module] |= {t for t in targets if t in modules and t != module}
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def main(argv: list[str]) -> int:
    show_graph = "--graph" in argv
    paths = [Path(arg) for arg in argv if arg != "--graph"]
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    failed = False
    for path in paths:
        graph = python_graph(path) if (path / "__init__.py").exists() else rust_graph(path)
        if show_graph:
            for node in sorted(graph):
                print(f"{path}: {node} -> {', '.join(sorted(graph[node])) or '-'}")
        for component in cycles(graph):
            failed = True
            print(f"{path}: import cycle among {', '.join(component)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
