"""A synthetic city for tests and benchmarks: the plan's 18 towns/subdistricts, 811 villages and
67 residential communities, N residents, kiosks in some villages (or `kiosks` of them, several
per place), with coordinates, slot levels and a fleet state, a year of dispenses and, when asked,
a station per town and a year of exams.

Deterministic for a given seed. Bulk inserts through SQLAlchemy Core (executemany), not the ORM:
a city is hundreds of thousands of rows. Personal fields are encrypted exactly as enrolment does.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from server.services import Context, seed_catalog
from server.services.seeding import seed_exam_programmes
from server.store.models import (
    Authorization,
    AuthorizationStatus,
    Card,
    CardStatus,
    ExamProgramme,
    ExamRecord,
    Kiosk,
    KioskSlot,
    KioskStatus,
    Region,
    RegionKind,
    Resident,
    ResidentStatus,
    Usage,
)

TOWNS = 18
VILLAGES = 811
COMMUNITIES = 67
BATCH = 5_000


@dataclass(frozen=True)
class SyntheticCity:
    towns: int
    villages: int
    communities: int
    residents: int
    kiosks: int
    dispenses: int


def generate(
    session: Session,
    ctx: Context,
    *,
    residents: int = 10_000,
    dispenses: int = 30_000,
    kiosk_every: int = 10,
    kiosks: int | None = None,
    exams: int = 0,
    year: int = 2026,
    seed: int = 1,
) -> SyntheticCity:
    """Fill an empty, migrated database. Commits."""
    rng = random.Random(seed)
    product = seed_catalog(session)  # the condom category, its monthly rule, one product
    category_id = product.category_id
    city = Region(code="SYN", name="Synthetic City", kind=RegionKind.CITY, parent_id=None)
    session.add(city)
    session.flush()
    city_id = city.id

    town_rows = [
        {"code": f"T{t:02d}", "name": f"Town {t}", "kind": RegionKind.TOWN, "parent_id": city_id}
        for t in range(1, TOWNS + 1)
    ]
    session.execute(insert(Region), town_rows)
    towns = list(
        session.scalars(select(Region.id).where(Region.code.like("T%")).order_by(Region.id))
    )
    leaves = []
    for i in range(VILLAGES + COMMUNITIES):
        kind = RegionKind.VILLAGE if i < VILLAGES else RegionKind.COMMUNITY
        leaves.append(
            {
                "code": f"L{i:04d}",
                "name": f"{kind.value.title()} {i}",
                "kind": kind,
                "parent_id": towns[i * TOWNS // (VILLAGES + COMMUNITIES)],
            }
        )
    session.execute(insert(Region), leaves)
    leaf_ids = list(
        session.scalars(select(Region.id).where(Region.code.like("L%")).order_by(Region.id))
    )

    now = ctx.now()
    if kiosks is None:
        kiosk_regions = leaf_ids[::kiosk_every]
    else:  # as many as asked, spread over the villages and communities (several per place)
        kiosk_regions = [leaf_ids[i * 7919 % len(leaf_ids)] for i in range(kiosks)]
    town_of_leaf = {
        leaf: towns[i * TOWNS // (VILLAGES + COMMUNITIES)] for i, leaf in enumerate(leaf_ids)
    }
    town_index = {town: i for i, town in enumerate(towns)}
    kiosk_rows = []
    for i, region_id in enumerate(kiosk_regions):
        t = town_index[town_of_leaf[region_id]]
        # Fleet telemetry as a city would look: most heartbeats a minute old, a few late or gone.
        age = rng.choice([30] * 45 + [240, 400, 3600, 86_400])
        kiosk_rows.append(
            {
                "id": f"S-{i:04d}",
                "public_key": "A" * 43 + "=",
                "region_id": region_id,
                "enabled": True,
                "last_counter": 0,
                "created_at": now - dt.timedelta(days=400),
                "last_seen_at": now - dt.timedelta(seconds=age),
                "latitude": 31.0 + (t // 6) * 0.12 + rng.random() * 0.1,
                "longitude": 121.0 + (t % 6) * 0.12 + rng.random() * 0.1,
            }
        )
    session.execute(insert(Kiosk), kiosk_rows)
    session.execute(
        insert(KioskSlot),
        [
            {
                "kiosk_id": f"S-{i:04d}",
                "slot": 1,
                "product_id": product.id,
                "stock": rng.choice([0, 2, 5, 12, 20, 30, 40, 40, 40]),
                "minimum": 5,
                "capacity": 40,
            }
            for i in range(len(kiosk_regions))
        ],
    )
    session.execute(
        insert(KioskStatus),
        [
            {
                "kiosk_id": f"S-{i:04d}",
                "door_open": rng.random() < 0.01,
                "door_open_since": now - dt.timedelta(minutes=20),
                "temperature_c": round(rng.uniform(5.0, 38.0), 1),
                "faults": '["jam"]' if rng.random() < 0.02 else "[]",
                "updated_at": now,
            }
            for i in range(len(kiosk_regions))
        ],
    )

    first_resident = (
        session.scalar(select(Resident.id).order_by(Resident.id.desc()).limit(1)) or 0
    ) + 1
    cipher = ctx.cipher
    for start in range(0, residents, BATCH):
        rows = []
        for n in range(start, min(start + BATCH, residents)):
            birth = dt.date(1965, 1, 1) + dt.timedelta(days=rng.randrange(0, 40 * 365))
            id_number = f"SYN{seed:03d}{n:012d}"
            rows.append(
                {
                    "id": first_resident + n,
                    "region_id": rng.choice(leaf_ids),
                    "name_enc": cipher.encrypt("name", f"Resident {n}"),
                    "sex_enc": cipher.encrypt("sex", "F" if rng.random() < 0.7 else "M"),
                    "birth_date_enc": cipher.encrypt_date("birth_date", birth),
                    "phone_enc": None,
                    "id_number_hash": cipher.id_number_hash(id_number),
                    "id_number_last4": id_number[-4:],
                    # The search indexes enrolment fills (services.people.enrol_resident).
                    "name_index": cipher.blind_index("name", f"Resident {n}"),
                    "id_prefix_index": cipher.id_prefix_index(id_number[:6], id_number[-4:]),
                    "id_birth_index": cipher.id_birth_index(birth, id_number[-4:]),
                    "status": ResidentStatus.ACTIVE,
                    "created_at": now,
                }
            )
        session.execute(insert(Resident), rows)
        session.execute(
            insert(Card),
            [
                {
                    "guid": uuid.UUID(int=rng.getrandbits(128)).hex,
                    "resident_id": row["id"],
                    "certificate": b"synthetic",
                    "not_after": now + dt.timedelta(days=3650),
                    "status": CardStatus.ACTIVE,
                    "issued_at": now,
                }
                for row in rows
            ],
        )
    card_of = dict(
        session.execute(
            select(Card.resident_id, Card.id).where(Card.certificate == b"synthetic")
        ).all()
    )

    counters = dict.fromkeys(range(len(kiosk_regions)), 0)
    usage: dict[tuple[int, dt.date], int] = {}
    start_day = dt.date(year, 1, 1)
    for begin in range(0, dispenses, BATCH):
        rows = []
        for _ in range(begin, min(begin + BATCH, dispenses)):
            resident_id = first_resident + rng.randrange(residents)
            day = start_day + dt.timedelta(days=rng.randrange(365))
            kiosk = rng.randrange(len(kiosk_regions))
            counters[kiosk] += 1
            at = dt.datetime.combine(day, dt.time(rng.randrange(8, 20), rng.randrange(60)), dt.UTC)
            rows.append(
                {
                    "id": uuid.UUID(int=rng.getrandbits(128)).hex,
                    "kiosk_id": f"S-{kiosk:04d}",
                    "card_id": card_of[resident_id],
                    "resident_id": resident_id,
                    "product_id": product.id,
                    "category_id": category_id,
                    "slot": 1,
                    "quantity": 1,
                    "units": 1,
                    "usage_day": day,
                    "proof_counter": counters[kiosk],
                    "status": AuthorizationStatus.CAPTURED,
                    "created_at": at,
                    "settled_at": at,
                    "board_txn": counters[kiosk],
                }
            )
            usage[(resident_id, day)] = usage.get((resident_id, day), 0) + 1
        session.execute(insert(Authorization), rows)
    items = list(usage.items())
    for begin in range(0, len(items), BATCH):
        session.execute(
            insert(Usage),
            [
                {
                    "resident_id": r,
                    "category_id": category_id,
                    "day": d,
                    "reserved": 0,
                    "captured": n,
                }
                for (r, d), n in items[begin : begin + BATCH]
            ],
        )
    if exams:
        seed_exam_programmes(session)
        programmes = list(session.scalars(select(ExamProgramme.id).order_by(ExamProgramme.id)))
        stations = [f"ST-{t + 1:02d}" for t in range(len(towns))]
        session.execute(
            insert(Kiosk),
            [
                {
                    "id": station,
                    "public_key": "A" * 43 + "=",
                    "region_id": town,
                    "enabled": True,
                    "last_counter": 0,
                    "created_at": now,
                    "last_seen_at": now,
                    "kind": "station",
                }
                for station, town in zip(stations, towns, strict=True)
            ],
        )
        for begin in range(0, exams, BATCH):
            session.execute(
                insert(ExamRecord),
                [
                    {
                        "programme_id": rng.choice(programmes),
                        "resident_id": first_resident + rng.randrange(residents),
                        "station_id": rng.choice(stations),
                        "given_on": start_day + dt.timedelta(days=rng.randrange(365)),
                        "created_at": now,
                    }
                    for _ in range(begin, min(begin + BATCH, exams))
                ],
            )
    for kiosk, counter in counters.items():
        if counter:
            session.execute(
                update(Kiosk).where(Kiosk.id == f"S-{kiosk:04d}").values(last_counter=counter)
            )
    session.commit()
    return SyntheticCity(TOWNS, VILLAGES, COMMUNITIES, residents, len(kiosk_regions), dispenses)
