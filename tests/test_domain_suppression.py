"""Small-count suppression (server.domain.suppression): an attacker who knows every published
cell and total tries to recover a suppressed small cell, by linear algebra and by integer
interval reasoning, and fails; the same attacker succeeds against primary suppression alone,
so the attack is real.

The attacker here is written independently of the module: the table's row and column sums as
equations over the suppressed cells, solved with numpy's rank and scipy's integer programme
(`milp`), not the module's circulation and linear programmes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import Bounds, LinearConstraint, milp

from server.domain.suppression import (
    THRESHOLD,
    SuppressedTable,
    SuppressionError,
    suppress,
    suppress_list,
)
from server.domain.suppression_audit import audit

Extended = list[list[int]]
CAP = 10_000.0  # the attacker's upper bound on any count; a bound near it means "unbounded"
UNBOUNDED = CAP / 2


def extended_truth(table: Sequence[Sequence[int]]) -> Extended:
    rows = [list(row) + [sum(row)] for row in table]
    rows.append([sum(col) for col in zip(*rows, strict=True)])
    return rows


def equations(
    published: list[list[int | None]],
) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    """The sums an attacker knows, as A x = b over the unknown (suppressed) cells."""
    n_rows, n_cols = len(published) - 1, len(published[0]) - 1
    unknown = [
        (i, j) for i in range(n_rows + 1) for j in range(n_cols + 1) if published[i][j] is None
    ]
    index = {cell: k for k, cell in enumerate(unknown)}
    lines = [[(i, j) for j in range(n_cols + 1)] for i in range(n_rows + 1)]
    lines += [[(i, j) for i in range(n_rows + 1)] for j in range(n_cols + 1)]
    a_rows, b = [], []
    for line in lines:
        *parts, total = line  # parts sum to the line's last cell
        coefficients = np.zeros(len(unknown))
        rhs = 0.0
        for cell, sign in [(c, 1.0) for c in parts] + [(total, -1.0)]:
            value = published[cell[0]][cell[1]]
            if value is None:
                coefficients[index[cell]] += sign
            else:
                rhs -= sign * value
        a_rows.append(coefficients)
        b.append(rhs)
    return unknown, np.array(a_rows).reshape(len(lines), len(unknown)), np.array(b)


def determined_by_algebra(published: list[list[int | None]]) -> set[tuple[int, int]]:
    """Cells whose value follows from the sums alone: e_k lies in the row space of A."""
    unknown, a, _ = equations(published)
    if not unknown:
        return set()
    rank = np.linalg.matrix_rank(a)
    found = set()
    for k, cell in enumerate(unknown):
        unit = np.zeros((1, len(unknown)))
        unit[0, k] = 1.0
        if np.linalg.matrix_rank(np.vstack([a, unit])) == rank:
            found.add(cell)
    return found


def integer_interval(
    published: list[list[int | None]], cell: tuple[int, int]
) -> tuple[float, float]:
    """The tightest integer bounds of `cell` given the sums and non-negative counts."""
    unknown, a, b = equations(published)
    k = unknown.index(cell)
    constraint = LinearConstraint(a, b, b)
    bounds = Bounds(np.zeros(len(unknown)), np.full(len(unknown), CAP))
    integrality = np.ones(len(unknown))
    objective = np.zeros(len(unknown))
    objective[k] = 1.0
    low = milp(objective, constraints=constraint, bounds=bounds, integrality=integrality)
    high = milp(-objective, constraints=constraint, bounds=bounds, integrality=integrality)
    assert low.status == 0 and high.status == 0
    return low.fun, -high.fun


def attack(result: SuppressedTable) -> dict[tuple[int, int], tuple[float, float]]:
    published = result.extended()
    return {cell: integer_interval(published, cell) for cell in result.primary}


def check_protected(
    table: Sequence[Sequence[int]], result: SuppressedTable, *, zeros: bool = False
) -> None:
    truth = extended_truth(table)
    published = result.extended()
    for i, row in enumerate(published):
        for j, value in enumerate(row):
            assert value is None or value == truth[i][j]
            if 0 < truth[i][j] < THRESHOLD or (zeros and truth[i][j] == 0):
                assert value is None, f"small cell {(i, j)} published"
    assert not determined_by_algebra(published) & result.primary
    for cell, (low, high) in attack(result).items():
        assert low <= truth[cell[0]][cell[1]] <= high
        assert high - low >= THRESHOLD, f"cell {cell} pinned to [{low}, {high}]"


def test_a_lone_small_cell_is_hidden_with_a_rectangle_and_cannot_be_recovered() -> None:
    table = [[10, 3, 12], [8, 9, 20], [15, 11, 7]]
    result = suppress(table)
    assert result.primary == {(0, 1)}
    assert len(result.complementary) == 3  # one rectangle, no totals
    assert result.total == 95 and None not in result.row_totals + result.column_totals
    check_protected(table, result)


def test_the_attack_recovers_a_cell_under_primary_suppression_alone() -> None:
    # The control: hiding only the small cell, the row total gives it away exactly.
    table = [[10, 3, 12], [8, 9, 20], [15, 11, 7]]
    published: list[list[int | None]] = [list(row) for row in extended_truth(table)]
    published[0][1] = None
    assert determined_by_algebra(published) == {(0, 1)}
    assert integer_interval(published, (0, 1)) == (3, 3)
    # Four small cells in a rectangle hide each other from algebra, but not from intervals:
    # (0, 0) can only move by t in [-1, 2].
    table = [[1, 2, 40], [2, 1, 40], [30, 30, 30]]
    published = [list(row) for row in extended_truth(table)]
    for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):
        published[i][j] = None
    assert not determined_by_algebra(published)
    assert integer_interval(published, (0, 0)) == (0, 3)
    check_protected(table, suppress(table))


def test_small_totals_are_suppressed_too() -> None:
    table = [[1, 2], [0, 1], [20, 30]]
    result = suppress(table)
    assert result.row_totals[0] is None and result.row_totals[1] is None
    check_protected(table, result)


def test_zeros_are_published_unless_asked_and_an_all_small_table_shows_no_count() -> None:
    assert suppress([[0, 20], [30, 40]]).cells == ((0, 20), (30, 40))
    hidden_zero = suppress([[0, 20], [30, 40]], zeros_are_small=True)
    assert hidden_zero.cells[0][0] is None
    check_protected([[0, 20], [30, 40]], hidden_zero, zeros=True)
    # Every count small: each is hidden with its totals (the grand total too), so none has an
    # upper bound; only the zero stays.
    result = suppress([[1, 2], [0, 1]])
    assert result.total is None
    assert [v for row in result.extended() for v in row if v is not None] == [0]
    check_protected([[1, 2], [0, 1]], result)


def test_a_one_way_table() -> None:
    counts, total = suppress_list([1, 20, 30, 40])
    assert counts[0] is None and total == 91
    assert sum(1 for c in counts if c is None) >= 2  # the lone small count is not the total's rest
    result = suppress([[1], [20], [30], [40]])
    check_protected([[1], [20], [30], [40]], result)


def test_ragged_or_negative_tables_are_refused() -> None:
    with pytest.raises(SuppressionError):
        suppress([[1, 2], [3]])
    with pytest.raises(SuppressionError):
        suppress([[1, -2]])


counts = st.one_of(st.integers(0, 4), st.integers(5, 60))
tables = st.integers(1, 4).flatmap(
    lambda columns: st.lists(
        st.lists(counts, min_size=columns, max_size=columns), min_size=1, max_size=4
    )
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables, st.booleans())
def test_no_suppressed_small_cell_can_be_worked_out(table: list[list[int]], zeros: bool) -> None:
    result = suppress(table, zeros_are_small=zeros)
    check_protected(table, result, zeros=zeros)
    # The module's own auditor agrees with the independent attacker on every small cell.
    truth = extended_truth(table)
    for cell, (low, high) in audit(truth, result.suppressed, result.primary).items():
        attacker_low, attacker_high = integer_interval(result.extended(), cell)
        assert low == pytest.approx(attacker_low)
        if attacker_high < UNBOUNDED:
            assert high == pytest.approx(attacker_high)
        else:
            assert high == float("inf")
