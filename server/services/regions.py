"""The region tree from a CSV file: a city's towns, villages and communities (codes, names,
kinds, parents), checked as a whole before anything is written.

The file has a header `code,name,kind,parent` (UTF-8, a byte-order mark allowed); `kind` is one
of city, town, subdistrict, village, community; `parent` is the code of a region already in the
tree or earlier in the file (empty only for a city). `plan` reads and checks the file and says
what would be added or renamed and every problem, with its line; `apply` writes a plan that has
no problem. A region already in the tree keeps its place: the file may rename it, not move it.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.errors import InvalidRequest
from server.services.context import Context
from server.services.people import in_scope
from server.store import audit
from server.store.models import Region, RegionKind, StaffUser

COLUMNS = ("code", "name", "kind", "parent")
CODE = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
MAX_ROWS = 20_000
MAX_NAME = 200


@dataclass(frozen=True)
class Problem:
    line: int  # 1 is the header
    code: str  # a stable code: missing_column, code_invalid, name_missing, kind_invalid, ...
    detail: str


@dataclass(frozen=True)
class PlannedRegion:
    line: int
    code: str
    name: str
    kind: RegionKind
    parent: str | None
    action: str  # add | rename | same


@dataclass
class Plan:
    rows: list[PlannedRegion] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def writable(self) -> bool:
        return not self.problems and any(r.action != "same" for r in self.rows)

    def count(self, action: str) -> int:
        return sum(1 for r in self.rows if r.action == action)


def plan(session: Session, user: StaffUser, text: str) -> Plan:
    """Read and check the whole file; nothing is written."""
    result = Plan()
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    header = [h.strip().lower() for h in next(reader, [])]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        result.problems.append(
            Problem(1, "missing_column", f"the header lacks: {', '.join(missing)}")
        )
        return result
    at = {c: header.index(c) for c in COLUMNS}
    existing = {
        code: (region_id, name, kind, parent_id)
        for region_id, code, name, kind, parent_id in session.execute(
            select(Region.id, Region.code, Region.name, Region.kind, Region.parent_id)
        )
    }
    code_of_id = {v[0]: k for k, v in existing.items()}
    seen: dict[str, int] = {}
    for line, raw in enumerate(reader, start=2):
        if not any(cell.strip() for cell in raw):
            continue
        if line > MAX_ROWS + 1:
            result.problems.append(Problem(line, "too_many_rows", f"at most {MAX_ROWS} rows"))
            break
        cells = [*raw, *[""] * len(COLUMNS)]
        code, name, kind_text, parent = (cells[at[c]].strip() for c in COLUMNS)
        problems = _row_problems(line, code, name, kind_text, parent, seen, existing)
        result.problems.extend(problems)
        if problems:
            continue
        seen[code] = line
        kind = RegionKind(kind_text)
        parent_code = parent or None
        if code in existing:
            _, old_name, old_kind, old_parent_id = existing[code]
            old_parent = code_of_id.get(old_parent_id) if old_parent_id else None
            if old_kind != kind or old_parent != parent_code:
                result.problems.append(
                    Problem(
                        line,
                        "region_moved",
                        f"{code} exists as a {old_kind.value} under "
                        f"{old_parent or 'nothing'}; a file can rename it, not move it",
                    )
                )
                continue
            action = "same" if old_name == name else "rename"
        else:
            action = "add"
        scope_region = (
            existing[code][0]
            if code in existing
            else (existing[parent_code][0] if parent_code in existing else None)
        )
        if scope_region is not None and not in_scope(session, user, scope_region):
            result.problems.append(
                Problem(line, "out_of_scope", f"{code} would be outside your area")
            )
            continue
        if scope_region is None and user.region_id is not None and parent_code is None:
            result.problems.append(Problem(line, "out_of_scope", "a new city is not yours to add"))
            continue
        result.rows.append(PlannedRegion(line, code, name, kind, parent_code, action))
    return result


def _row_problems(
    line: int,
    code: str,
    name: str,
    kind: str,
    parent: str,
    seen: dict[str, int],
    existing: dict[str, tuple[int, str, RegionKind, int | None]],
) -> list[Problem]:
    problems = []
    if not CODE.match(code):
        problems.append(
            Problem(line, "code_invalid", f"code {code!r}: 1 to 40 letters, digits, . _ -")
        )
    elif code in seen:
        problems.append(Problem(line, "code_repeated", f"{code} is also on line {seen[code]}"))
    if not name or len(name) > MAX_NAME:
        problems.append(Problem(line, "name_missing", f"a name of 1 to {MAX_NAME} characters"))
    if kind not in {k.value for k in RegionKind}:
        problems.append(
            Problem(
                line,
                "kind_invalid",
                f"kind {kind!r}: one of {', '.join(k.value for k in RegionKind)}",
            )
        )
    elif (kind == RegionKind.CITY.value) != (parent == ""):
        problems.append(
            Problem(line, "parent_invalid", "a city has no parent; every other kind has one")
        )
    if parent and parent not in seen and parent not in existing:
        problems.append(
            Problem(
                line,
                "parent_unknown",
                f"parent {parent} is neither in the tree nor earlier in the file",
            )
        )
    if parent and parent == code:
        problems.append(Problem(line, "parent_invalid", "a region cannot be its own parent"))
    return problems


def apply(session: Session, ctx: Context, user: StaffUser, text: str) -> Plan:
    """Check the file again and write it, all or nothing (no commit)."""
    checked = plan(session, user, text)
    if checked.problems:
        raise InvalidRequest(
            f"the file has {len(checked.problems)} problems", code="regions_invalid", field="file"
        )
    ids = dict(session.execute(select(Region.code, Region.id)).all())
    for row in checked.rows:
        if row.action == "add":
            region = Region(
                code=row.code,
                name=row.name,
                kind=row.kind,
                parent_id=ids[row.parent] if row.parent else None,
            )
            session.add(region)
            session.flush()
            ids[row.code] = region.id
        elif row.action == "rename":
            region = session.get(Region, ids[row.code])
            assert region is not None
            region.name = row.name
    audit.append(
        session,
        at=ctx.now(),
        actor=f"user:{user.id}",
        action="regions.import",
        subject="regions",
        detail={"added": checked.count("add"), "renamed": checked.count("rename")},
    )
    return checked
