"""The attacker's exact view of a suppressed table (server.domain.suppression): the tightest
interval each hidden cell can be narrowed to from what is published.

The table with its margins is a circulation on a small directed graph (source -> row i [row
total], row i -> column j [cell], column j -> sink [column total], sink -> source [grand
total]); published cells fix flows, suppressed cells are free non-negative flows, and the bound
of one cell is a linear programme over the connected part of the suppressed cells only. The
graph's incidence matrix is totally unimodular, so the linear programme's bounds are the integer
bounds.

A module of its own because it needs scipy's linear programming, which the server does not:
the reports only suppress (server.domain.suppression, numpy), and a worker that imported scipy
carried about 400 more modules and 40 MB for nothing. The tests and anyone checking a
published table import this one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy.optimize import linprog

from server.domain.suppression import Cell


class _Circulation:
    """The extended table as a circulation: node 0 the source, 1..R rows, R+1..R+C columns,
    R+C+1 the sink; each extended cell is one edge."""

    def __init__(self, rows: int, columns: int) -> None:
        self.rows, self.columns = rows, columns
        self.sink = rows + columns + 1

    def edge(self, cell: Cell) -> tuple[int, int]:
        i, j = cell
        if i < self.rows and j < self.columns:
            return 1 + i, 1 + self.rows + j
        if i < self.rows:  # row total
            return 0, 1 + i
        if j < self.columns:  # column total
            return 1 + self.rows + j, self.sink
        return self.sink, 0  # grand total


def audit(
    extended: Sequence[Sequence[int]],
    suppressed: Iterable[Cell],
    cells: Iterable[Cell] | None = None,
) -> dict[Cell, tuple[float, float]]:
    """The attacker's tightest interval for each of `cells` (default: every suppressed cell),
    knowing every other cell of the extended table and that counts are non-negative.
    `extended` holds the true counts, margins included; `high` may be `inf`."""
    rows, columns = len(extended) - 1, len(extended[0]) - 1
    graph = _Circulation(rows, columns)
    hidden = sorted(set(suppressed))
    wanted = hidden if cells is None else sorted(set(cells))
    hidden_set = set(hidden)
    wanted_set = set(wanted)
    # Net known inflow at every node, from the published edges.
    known = [0] * (graph.sink + 1)
    for i in range(rows + 1):
        for j in range(columns + 1):
            if (i, j) not in hidden_set:
                tail, head = graph.edge((i, j))
                known[tail] -= extended[i][j]
                known[head] += extended[i][j]
    components = _components(graph, hidden)
    result: dict[Cell, tuple[float, float]] = {}
    for component in components:
        targets = [c for c in component if c in wanted_set]
        if not targets:
            continue
        nodes = sorted({n for c in component for n in graph.edge(c)})
        index = {n: k for k, n in enumerate(nodes)}
        matrix = np.zeros((len(nodes), len(component)))
        for k, cell in enumerate(component):
            tail, head = graph.edge(cell)
            matrix[index[tail], k] -= 1.0
            matrix[index[head], k] += 1.0
        # Conservation: hidden inflow + known inflow = 0 at every node of the component.
        rhs = np.array([-known[n] for n in nodes], dtype=float)
        for cell in targets:
            k = component.index(cell)
            objective = np.zeros(len(component))
            objective[k] = 1.0
            low = linprog(objective, A_eq=matrix, b_eq=rhs, bounds=(0, None), method="highs")
            high = linprog(-objective, A_eq=matrix, b_eq=rhs, bounds=(0, None), method="highs")
            low_value = low.fun if low.status == 0 else 0.0
            high_value = -high.fun if high.status == 0 else float("inf")
            result[cell] = (round(low_value, 6), round(high_value, 6))
    return result


def _components(graph: _Circulation, hidden: Sequence[Cell]) -> list[list[Cell]]:
    """The hidden cells grouped by the connected parts of the graph they form."""
    parent = list(range(graph.sink + 1))

    def find(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for cell in hidden:
        tail, head = graph.edge(cell)
        parent[find(tail)] = find(head)
    groups: dict[int, list[Cell]] = {}
    for cell in hidden:
        groups.setdefault(find(graph.edge(cell)[0]), []).append(cell)
    return list(groups.values())
