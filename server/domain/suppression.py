"""Small-count suppression with complementary suppression, for every table a report or an export
publishes.

Pure: counts in, the publishable table out. A table is `rows x columns` counts with its row
totals, column totals and grand total. Rule:

1. *Primary*: every cell (margins included) counting fewer than `threshold` (5) people or events
   is suppressed. A zero is published by default (`zeros_are_small=False`): "nobody" singles
   out no one, and hiding every zero would blank most of a sparse table (a village's month)
   and, through the rectangles, the cells beside them; a caller who must hide zeros too says so.
2. *Complementary*: further cells are suppressed until no primary cell can be worked out from
   what is published. "Worked out" is judged the way an attacker would: every published cell
   and total is a constraint (each row sums to its total, each column to its total, the totals
   to the grand total, counts are never negative), and the attacker's tightest interval
   `[low, high]` for a primary cell must be at least `threshold` wide (`high - low >= threshold`,
   or unbounded). A suppressed total is treated the same as a suppressed cell.

The auditor (server.domain.suppression_audit) solves those intervals exactly, a linear
programme per cell.

The complementary cells are chosen by the hypercube method (Repsilber's, in two dimensions):
for each primary cell, smallest first, the cheapest rectangle of cells through it whose
corners let it move by at least `threshold` while every sum stays true is hidden (inner cells
before totals, small before large, corners already hidden reused). That is a proof of
protection by construction: the rectangle alone keeps the cell's interval that wide, and
hiding more cells only widens it. It is not an optimal (least-loss) solution.
`server.domain.suppression_audit.audit` computes the attacker's intervals exactly (a linear
programme per cell, with scipy) for the tests and for anyone who wants to check a table; it is
a module of its own so that the server, which only suppresses, never imports scipy.

Known limit: tables are protected one at a time. Two published tables that share cells (a
report by village and another by town for the same months) are linked; the reports publish the
finer table with its own totals so that the coarser one is its margin, not a second table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

THRESHOLD = 5

Cell = tuple[int, int]
"""A cell of the extended table: (row, column), where row == rows is the column-totals row and
column == columns is the row-totals column; (rows, columns) is the grand total."""


class SuppressionError(ValueError):
    """A table that cannot be suppressed: ragged rows or negative counts."""


@dataclass(frozen=True)
class SuppressedTable:
    """What may be published: None where a count is suppressed."""

    cells: tuple[tuple[int | None, ...], ...]
    row_totals: tuple[int | None, ...]
    column_totals: tuple[int | None, ...]
    total: int | None
    primary: frozenset[Cell]
    complementary: frozenset[Cell]
    threshold: int

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.row_totals), len(self.column_totals)

    def extended(self) -> list[list[int | None]]:
        """The (rows + 1) x (columns + 1) table with its margins, as published."""
        rows = [[*row, total] for row, total in zip(self.cells, self.row_totals, strict=True)]
        rows.append([*self.column_totals, self.total])
        return rows

    @property
    def suppressed(self) -> frozenset[Cell]:
        return self.primary | self.complementary


def _extended_counts(table: Sequence[Sequence[int]]) -> tuple[list[list[int]], int, int]:
    rows = len(table)
    columns = len(table[0]) if rows else 0
    if any(len(row) != columns for row in table):
        raise SuppressionError("every row needs the same number of columns")
    if any(value < 0 for row in table for value in row):
        raise SuppressionError("counts are never negative")
    extended = [[int(v) for v in row] + [sum(int(v) for v in row)] for row in table]
    extended.append([sum(table[i][j] for i in range(rows)) for j in range(columns)])
    extended[rows].append(sum(extended[rows]))
    return extended, rows, columns


MARGIN_COST = 10_000.0  # hiding a total costs more than hiding any inner cell
CELL_COST = 1.0  # and each newly hidden cell a little, so hidden corners are reused
ROOMY = 1e12  # a corner that never limits the move


def _weights(size: int) -> np.ndarray:
    """+1 for the inner lines, -1 for the totals line: each line's constraint is sum(w x) = 0."""
    weights = np.ones(size + 1)
    weights[size] = -1.0
    return weights


class _Rectangles:
    """Finds and hides the cheapest wide-enough rectangle through a cell (`protect`).

    For rows a, b and columns c, d of the extended table ((a, c) being the cell), adding t to
    (a, c), -wc*wd*t to (a, d), -wa*wb*t to (b, c) and wa*wb*wc*wd*t to (b, d) keeps every row
    and column sum (w: +1 inner line, -1 totals line). With those four cells hidden an attacker
    cannot tell the true table from the one moved by any t that keeps the four non-negative: a
    range as wide as (smallest corner moving down when t > 0) + (smallest corner moving down
    when t < 0, the cell itself among them). Hiding more cells only widens it.

    The signs depend only on whether a and c are totals lines, so the (b, d) corner's limits
    are computed once per such kind; each cell then costs a few whole-table array operations.
    """

    def __init__(self, values: np.ndarray, hidden: np.ndarray, threshold: int) -> None:
        self.values, self.hidden, self.threshold = values, hidden, threshold
        rows, columns = values.shape
        self.wr, self.wc = _weights(rows - 1), _weights(columns - 1)
        margin = np.zeros_like(values)
        margin[rows - 1, :] = 1.0
        margin[:, columns - 1] = 1.0
        self.cost_of = np.where(hidden, 0.0, values + CELL_COST + MARGIN_COST * margin)
        self._limits: dict[tuple[float, float], tuple[np.ndarray, ...]] = {}

    def _kind(self, a: int, c: int) -> tuple[np.ndarray, ...]:
        key = (self.wr[a], self.wc[c])
        if key not in self._limits:
            sign_ad = -self.wc[c] * self.wc  # per column d
            sign_bc = -self.wr[a] * self.wr  # per row b
            sign_bd = np.outer(sign_bc, sign_ad)
            self._limits[key] = (
                sign_ad,
                sign_bc,
                np.where(sign_bd < 0, self.values, ROOMY),  # limits t > 0
                np.where(sign_bd > 0, self.values, ROOMY),  # limits t < 0
            )
        return self._limits[key]

    def protect(self, cell: Cell) -> bool:
        """Hide the cheapest rectangle through `cell`; False when none is wide enough."""
        a, c = cell
        values = self.values
        sign_ad, sign_bc, bd_up, bd_down = self._kind(a, c)
        row_a, col_c = values[a, :], values[:, c]
        room_up = np.minimum(
            np.minimum(bd_up, np.where(sign_ad < 0, row_a, ROOMY)[None, :]),
            np.where(sign_bc < 0, col_c, ROOMY)[:, None],
        )
        room_down = np.minimum(
            np.minimum(bd_down, np.where(sign_ad > 0, row_a, ROOMY)[None, :]),
            np.minimum(np.where(sign_bc > 0, col_c, ROOMY), values[a, c])[:, None],
        )
        wide = (room_up + room_down) >= self.threshold
        wide[a, :] = False
        wide[:, c] = False
        if not wide.any():
            return False
        cost_of = self.cost_of
        cost = np.where(wide, cost_of + cost_of[a, :][None, :] + cost_of[:, c][:, None], np.inf)
        b, d = (int(k) for k in np.unravel_index(int(np.argmin(cost)), cost.shape))
        for corner in ((a, c), (a, d), (b, c), (b, d)):
            self.hidden[corner] = True
            cost_of[corner] = 0.0
        return True


def suppress(
    table: Sequence[Sequence[int]], threshold: int = THRESHOLD, *, zeros_are_small: bool = False
) -> SuppressedTable:
    """Suppress `table` (rows of counts; its totals are computed here) for publication."""
    extended, rows, columns = _extended_counts(table)
    every = [(i, j) for i in range(rows + 1) for j in range(columns + 1)]
    smallest = 0 if zeros_are_small else 1
    primary = {c for c in every if smallest <= extended[c[0]][c[1]] < threshold}
    values = np.array(extended, dtype=float)
    hidden = np.zeros(values.shape, dtype=bool)
    for cell in primary:
        hidden[cell] = True
    rectangles = _Rectangles(values, hidden, threshold)
    # The smallest first: their rectangles are the hardest to find.
    for cell in sorted(primary, key=lambda c: (extended[c[0]][c[1]], c)):
        if not rectangles.protect(cell):
            hidden[:, :] = True  # no rectangle is wide enough: nothing can be published
            break
    hidden_cells = {c for c in every if hidden[c]}

    def shown(cell: Cell) -> int | None:
        return None if cell in hidden_cells else extended[cell[0]][cell[1]]

    return SuppressedTable(
        cells=tuple(tuple(shown((i, j)) for j in range(columns)) for i in range(rows)),
        row_totals=tuple(shown((i, columns)) for i in range(rows)),
        column_totals=tuple(shown((rows, j)) for j in range(columns)),
        total=shown((rows, columns)),
        primary=frozenset(primary),
        complementary=frozenset(hidden_cells - primary),
        threshold=threshold,
    )


def suppress_list(
    counts: Sequence[int], threshold: int = THRESHOLD, *, zeros_are_small: bool = False
) -> tuple[list[int | None], int | None]:
    """A one-way table (counts and their total): each count is a row of one column."""
    result = suppress([[c] for c in counts], threshold, zeros_are_small=zeros_are_small)
    return [row[0] for row in result.cells], result.total
