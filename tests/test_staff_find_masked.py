"""Finding a resident by a masked ID number (issue 11), in process on SQLite and PostgreSQL: the
first six and last four list the matching people of the technician's area only; the last four
alone list nobody (they need the name, the date of birth or the phone); every person shown is
one audited read and the chain holds; migration 0016 fills the date-of-birth index of earlier
residents when given the key, and their first-six index fills when their full number is next used.
"""

from __future__ import annotations

import base64
import datetime as dt
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import select

from server.errors import Unprocessable
from server.services import people
from server.store import audit
from server.store.db import make_engine
from server.store.fieldcrypto import FieldCipher
from server.store.migrate import downgrade, upgrade
from server.store.models import AuditEntry, Region, Resident, Role, StaffUser
from tests.fixtures.database import FIELD_KEY, ServerWorld
from tests.staff_browser import StaffBrowser, make_staff

TOWN = "C01-T01"
VILLAGE = "C01-T01-V001"
OTHER_TOWN = "C01-T02"

# name, ID number, date of birth, where registered
PEOPLE = [
    ("Li Mei", "110105199001011234", dt.date(1990, 1, 1), VILLAGE),
    ("Wang Fang", "110105198502021234", dt.date(1985, 2, 2), VILLAGE),
    ("Chen Jing", "110106199001011234", dt.date(1990, 1, 1), VILLAGE),  # another prefix
    ("Li Mei", "110105199203045678", dt.date(1992, 3, 4), VILLAGE),  # another last four
    ("Zhao Li", "110105197003031234", dt.date(1970, 3, 3), OTHER_TOWN),  # another town
]


def enrol_people(w: ServerWorld) -> dict[str, int]:
    ids = {}
    with w.sessionmaker() as session:
        for name, number, born, region in PEOPLE:
            resident = people.enrol_resident(
                session,
                w.ctx,
                name=name,
                sex="F",
                birth_date=born,
                phone=None,
                id_number=number,
                region_id=session.scalar(select(Region.id).where(Region.code == region)),
            )
            ids[number] = resident.id
        session.commit()
    return ids


def reads(w: ServerWorld, user_id: int) -> list[str]:
    with w.sessionmaker() as session:
        return list(
            session.scalars(
                select(AuditEntry.subject)
                .where(AuditEntry.actor == f"user:{user_id}", AuditEntry.action == "resident.read")
                .order_by(AuditEntry.id)
            )
        )


def test_a_masked_number_finds_the_areas_residents_each_an_audited_read(
    server_world: ServerWorld,
) -> None:
    w = server_world
    ids = enrol_people(w)
    tech_id = make_staff(w, "tech-town", Role.TECHNICIAN, TOWN, must_change=False)
    with w.sessionmaker() as session:
        tech = session.get(StaffUser, tech_id)
        assert tech is not None

        def find(**given: object) -> list[str]:
            found = people.search_residents(session, w.ctx, tech, **given)  # type: ignore[arg-type]
            session.commit()
            return sorted(r["name"] for r in found)

        # First six and last four: both people of the town with them, not the other prefix,
        # not the other town's person with the same six and four.
        assert find(id_number="110105********1234") == ["Li Mei", "Wang Fang"]
        assert find(id_number="110105 ＊＊＊＊ 1234") == ["Li Mei", "Wang Fang"]
        assert find(id_number="110105********9999") == []
        # The last four with the date of birth, the name or both.
        assert find(id_number="****1234", birth_date=dt.date(1990, 1, 1)) == [
            "Chen Jing",
            "Li Mei",
        ]
        assert find(id_number="1234", name="Li Mei") == ["Li Mei"]
        assert find(id_number="**************5678", name="li mei") == ["Li Mei"]
        assert find(id_number="110105********1234", birth_date=dt.date(1985, 2, 2)) == ["Wang Fang"]
        # What may not be asked, each refused next to its field with nobody read.
        for given, code, field in [
            ({"id_number": "****1234"}, "id_number_needs_more", "id_number"),
            ({"id_number": "1234"}, "id_number_needs_more", "id_number"),
            ({"id_number": "1101************1234"}, "id_number_mask_unknown", "id_number"),
            ({"id_number": "110105**1234**"}, "id_number_mask_unknown", "id_number"),
            (
                {"name": "Li Mei", "birth_date": dt.date(1990, 1, 1)},
                "birth_date_needs_last4",
                "birth_date",
            ),
        ]:
            before = len(reads(w, tech_id))
            with pytest.raises(Unprocessable) as refused:
                people.search_residents(session, w.ctx, tech, **given)  # type: ignore[arg-type]
            session.rollback()
            assert (refused.value.code, refused.value.extra["field"]) == (code, field)
            assert len(reads(w, tech_id)) == before

        # A page at a time, by id; the look-ahead that tells a page more follow is no read.
        before = len(reads(w, tech_id))
        peek = people.search_residents(
            session, w.ctx, tech, id_number="110105****1234", limit=1, one_more=True
        )
        session.commit()
        assert len(reads(w, tech_id)) == before + 1
        assert len(peek) == 2 and set(peek[1]) == {"resident_id"} and "name" in peek[0]
        first = people.search_residents(session, w.ctx, tech, id_number="110105****1234", limit=1)
        rest = people.search_residents(
            session, w.ctx, tech, id_number="110105****1234", after=first[0]["resident_id"]
        )
        session.commit()
        assert [r["resident_id"] for r in first + rest] == sorted(
            [ids["110105199001011234"], ids["110105198502021234"]]
        )
        assert {r["id_number"] for r in first + rest} == {"*" * 14 + "1234"}
        assert audit.verify_chain(session) is None

    # Every person shown was read once per search, in the order shown; the other town's never.
    subjects = reads(w, tech_id)
    assert f"resident:{ids['110105197003031234']}" not in subjects
    assert subjects[:2] == [
        f"resident:{ids['110105199001011234']}",
        f"resident:{ids['110105198502021234']}",
    ]
    assert len(subjects) == 2 + 2 + 2 + 1 + 1 + 1 + 1 + 2  # the look-ahead page read one


def test_the_find_page_takes_a_masked_number_and_says_what_is_missing(
    server_world: ServerWorld,
) -> None:
    w = server_world
    ids = enrol_people(w)
    make_staff(w, "tech-page", Role.TECHNICIAN, TOWN, must_change=False)
    browser = StaffBrowser(w.app)
    browser.sign_in("tech-page")
    found = browser.get("/technician/residents?id_number=110105********1234")
    assert found.status_code == 200
    page = found.get_data(as_text=True)
    assert f'data-resident="{ids["110105199001011234"]}"' in page
    assert f'data-resident="{ids["110105198502021234"]}"' in page
    assert f'data-resident="{ids["110105197003031234"]}"' not in page
    assert "110105199001011234" not in page and "*" * 14 + "1234" in page
    assert 'value="110105********1234"' in page  # the masked number stays in its field
    alone = browser.get("/technician/residents?id_number=****1234")
    assert alone.status_code == 400
    assert 'id="id_number-error"' in alone.get_data(as_text=True)
    assert "data-resident=" not in alone.get_data(as_text=True)
    with_birth = browser.get("/technician/residents?id_number=****1234&birth_date=1985-02-02")
    assert with_birth.status_code == 200
    assert f'data-resident="{ids["110105198502021234"]}"' in with_birth.get_data(as_text=True)
    full = browser.get("/technician/residents?id_number=110105198502021234")
    assert 'value="110105198502021234"' not in full.get_data(as_text=True)  # never echoed


def test_migration_0016_fills_the_birth_index_and_a_full_number_fills_the_prefix_index(
    database_url: str, tmp_path: Path
) -> None:
    key = base64.b64decode(FIELD_KEY)
    cipher = FieldCipher(key)
    number = "110105198811224321"
    downgrade(database_url, "0015")
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            region = connection.execute(
                sa.text(
                    "INSERT INTO regions (code, name, kind) VALUES ('OLD', 'Old town', 'town') "
                    "RETURNING id"
                )
            ).scalar_one()
            connection.execute(
                sa.text(
                    "INSERT INTO residents (region_id, name_enc, sex_enc, birth_date_enc, "
                    "id_number_hash, id_number_last4, status, created_at) VALUES (:region, :name, "
                    ":sex, :born, :hash, '4321', 'active', :now)"
                ),
                {
                    "region": region,
                    "name": cipher.encrypt("name", "Old Resident"),
                    "sex": cipher.encrypt("sex", "F"),
                    "born": cipher.encrypt_date("birth_date", dt.date(1988, 11, 22)),
                    "hash": cipher.id_number_hash(number),
                    "now": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                },
            )
    finally:
        engine.dispose()
    upgrade(database_url, field_key=key)

    w = ServerWorld(database_url, tmp_path / "server-data")
    try:
        admin_id = make_staff(w, "admin-old", Role.ADMINISTRATOR, None, must_change=False)
        with w.sessionmaker() as session:
            old = session.scalar(select(Resident).where(Resident.id_number_last4 == "4321"))
            assert old is not None
            assert old.id_birth_index == cipher.id_birth_index(dt.date(1988, 11, 22), "4321")
            assert old.id_prefix_index is None  # the first six were never stored
            admin = session.get(StaffUser, admin_id)
            assert admin is not None
            by_birth = people.search_residents(
                session, w.ctx, admin, id_number="****4321", birth_date=dt.date(1988, 11, 22)
            )
            assert [r["name"] for r in by_birth] == ["Old Resident"]
            assert people.search_residents(session, w.ctx, admin, id_number="110105****4321") == []
            people.search_residents(session, w.ctx, admin, id_number=number)
            session.commit()
            again = people.search_residents(session, w.ctx, admin, id_number="110105****4321")
            assert [r["name"] for r in again] == ["Old Resident"]
            session.commit()
    finally:
        w.close()


def test_pages_of_reads_appended_at_once_by_two_desks_keep_one_chain(
    server_world: ServerWorld,
) -> None:
    """Two technicians searching at the same time: each page of people is appended in one go,
    and the appends never fork the chain (the lock is taken before the last hash is read)."""
    w = server_world
    enrol_people(w)
    users = [
        make_staff(w, f"tech-desk-{n}", Role.TECHNICIAN, TOWN, must_change=False) for n in (1, 2)
    ]
    rounds = 12
    failures: list[BaseException] = []

    def desk(user_id: int) -> None:
        try:
            with w.sessionmaker() as session:
                user = session.get(StaffUser, user_id)
                for _ in range(rounds):
                    found = people.search_residents(
                        session, w.ctx, user, id_number="110105********1234"
                    )
                    assert len(found) == 2
                    session.commit()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=desk, args=(user_id,)) for user_id in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    with w.sessionmaker() as session:
        assert audit.verify_chain(session) is None
    assert [len(reads(w, user_id)) for user_id in users] == [2 * rounds, 2 * rounds]
