"""Dependencies between daemons, one implementation for the library and the config loader.

A graph maps each daemon's name to the names it ``depends_on``: a daemon starts once those are
ready and stops before them. Pure functions over plain mappings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def unknown(graph: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
    """(daemon, dependency) pairs whose dependency is not in the graph, in the graph's order."""
    return [(name, dep) for name, deps in graph.items() for dep in deps if dep not in graph]


def dependency_cycle(graph: Mapping[str, Sequence[str]]) -> list[str]:
    """A dependency cycle as a path that ends where it began (``a -> b -> a``), or [] if none.

    ``graph`` maps each daemon's name to the names it ``depends_on``; with a cycle, no daemon of it
    could start first, so :meth:`Manager.start` refuses it.

    Dependencies not in the graph are ignored (see :func:`unknown`).
    """
    color: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str]:
        color[name] = 1
        path.append(name)
        for dep in graph.get(name, ()):
            if color.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep in graph and dep not in color:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        color[name] = 2
        return []

    for name in graph:
        if name not in color:
            found = visit(name)
            if found:
                return found
    return []


def dependents(graph: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """For each daemon, the daemons that depend on it (which stop first)."""
    return {name: [other for other, deps in graph.items() if name in deps] for name in graph}
