"""The find page with a masked ID number, in Debian's Chromium against the real server (its own
process, real HTTP), in Simplified Chinese and English: the first six and last four list the
technician's area's matching people (another town's not), masked; the last four alone are refused
next to the field in the page's language with nobody read; with the date of birth they find the
one person. axe-core on every state, screenshots kept (tests/pages.py).

The server and its database are test_staff_pages.py's stage (module-scoped here too).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select

from server import services
from server.app import context_of, create_app
from server.store.db import db
from server.store.models import Region
from tests.pages import assert_accessible, page_in
from tests.test_staff_pages import (
    FIELD_KEY,
    OTHER_TOWN,
    VILLAGE,
    Stage,
    browser,
    rows,
    sign_in,
    stage,
)

__all__ = ["browser", "stage"]  # the fixtures, shared with test_staff_pages.py

WORDS = {
    "zh-CN": {
        "needs_more": "只有后 4 位时，请同时填写姓名、出生日期或电话。",
        "label": "身份证号（完整或脱敏）",
    },
    "en-US": {
        "needs_more": "With only the last 4, give the full name, the date of birth or the phone too.",
        "label": "ID number, full or masked",
    },
}


def enrol(stage: Stage, people: list[tuple[str, str, dt.date, str]]) -> None:
    app = create_app(
        {
            "ONECARD_DATABASE_URL": f"sqlite:///{stage.database}",
            "ONECARD_FIELD_KEY": FIELD_KEY,
            "ONECARD_DATA_DIR": str(stage.database.parent / "data"),
        }
    )
    try:
        with db.bound(app).sessionmaker() as session:
            ctx = context_of(app)
            for name, number, born, region in people:
                services.enrol_resident(
                    session,
                    ctx,
                    name=name,
                    sex="F",
                    birth_date=born,
                    phone=None,
                    id_number=number,
                    region_id=session.scalar(select(Region.id).where(Region.code == region)),
                )
            session.commit()
    finally:
        db.dispose(app)


def reads(stage: Stage) -> int:
    return rows(stage, "SELECT count(*) FROM audit_log WHERE action = 'resident.read'")[0][0]


@pytest.mark.parametrize("locale", ["zh-CN", "en-US"])
def test_a_technician_finds_residents_by_a_masked_id_number(
    stage: Stage, browser: Any, locale: str
) -> None:
    k = "7" if locale == "zh-CN" else "8"
    prefix = f"32010{k}"
    born = dt.date(1980 + int(k), 2, 2)  # the other language's run enrols its own people
    enrol(
        stage,
        [
            ("Sun Li", f"{prefix}199001011234", dt.date(1990, 1, 1), VILLAGE),
            ("Zhou Yan", f"{prefix}{born:%Y%m%d}1234", born, VILLAGE),
            ("Far Away", f"{prefix}197003031234", dt.date(1970, 3, 3), OTHER_TOWN),
        ],
    )
    words = WORDS[locale]
    with page_in(browser, locale) as page:
        sign_in(page, stage, "tech-town")
        page.goto(f"{stage.url}/technician/residents")
        assert page.inner_text("label[for=id_number]") == words["label"]
        assert_accessible(page)

        before = reads(stage)
        page.fill("#id_number", f"{prefix}********1234")
        page.click("#find")
        found = page.locator("tr[data-resident]")
        assert found.count() == 2
        names = sorted(found.nth(i).locator("td").nth(1).inner_text() for i in range(2))
        assert names == ["Sun Li", "Zhou Yan"]  # not the other town's
        assert "*" * 14 + "1234" in found.first.inner_text()
        assert f"{prefix}199001011234" not in page.content()
        assert page.input_value("#id_number") == f"{prefix}********1234"
        assert reads(stage) == before + 2
        assert_accessible(page)
        stage.shot(page, f"staff-find-masked-{locale}")

        page.fill("#id_number", "****1234")
        page.click("#find")
        error = page.locator("#id_number-error")
        assert error.is_visible() and error.inner_text() == words["needs_more"]
        assert page.locator("tr[data-resident]").count() == 0
        assert page.locator("table").count() == 0  # no "nobody matches" for a refused search
        assert reads(stage) == before + 2  # nobody read
        assert_accessible(page)
        stage.shot(page, f"staff-find-masked-refused-{locale}")

        page.fill("#birth_date", born.isoformat())
        page.click("#find")
        found = page.locator("tr[data-resident]")
        assert found.count() == 1 and "Zhou Yan" in found.inner_text()
        assert reads(stage) == before + 3
        assert_accessible(page)
