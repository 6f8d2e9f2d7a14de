"""Count the package's import graph: modules, arrows (module imports module, eager or deferred),
floors (the longest chain of arrows, +1) and cycles (strongly connected groups of modules).

    python scripts/import_graph.py [PACKAGE]     # default nnn_cli

A package's ``__init__`` importing its own children is counted like any other arrow.
"""

from __future__ import annotations

import sys

import grimp


def main(package: str = "nnn_cli") -> None:
    graph = grimp.build_graph(package)
    modules = sorted(m for m in graph.modules if m.split(".")[0] == package)
    edges = {
        m: sorted(n for n in graph.find_modules_directly_imported_by(m) if n.split(".")[0] == package) for m in modules
    }
    arrows = sum(len(v) for v in edges.values())
    # Tarjan's strongly connected components
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    sccs: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
            sccs.append(comp)

    sys.setrecursionlimit(10000)
    for m in modules:
        if m not in index:
            strong(m)
    cycles = [sorted(c) for c in sccs if len(c) > 1]
    comp_of = {m: i for i, c in enumerate(sccs) for m in c}
    depth: dict[int, int] = {}
    for i, comp in enumerate(sccs):  # Tarjan emits components in reverse topological order
        targets = {comp_of[w] for v in comp for w in edges[v]} - {i}
        depth[i] = 1 + max((depth[t] for t in targets), default=0)
    print(f"modules {len(modules)}, arrows {arrows}, floors {max(depth.values())}, cycles {len(cycles)}")
    for c in cycles:
        print("  cycle:", " <-> ".join(c))


if __name__ == "__main__":
    main(*sys.argv[1:])
