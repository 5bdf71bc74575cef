"""Finding a resident by a masked ID number (issue 11): two keyed hashes on residents.

- residents.id_prefix_index: HMAC of the ID number's first six and last four characters
  (FieldCipher.id_prefix_index), for a number masked as `110105********1234`.
- residents.id_birth_index: HMAC of the date of birth and the ID number's last four characters
  (FieldCipher.id_birth_index), for the last four with the person's date of birth.

Both are keyed (the field key's hash subkey), so this migration fills them only when it is given
the key (`onecard server init-db` passes it; `upgrade(..., field_key=...)`): id_birth_index
for every resident (the date of birth is decrypted). id_prefix_index cannot be filled for
residents enrolled before: only the keyed hash of the full number and its last four were ever
stored, never the first six. It is filled at enrolment, and for an earlier resident the first
time their full number is used (found by it, or named as a partner). Run without the key, the
columns stay empty and `onecard server reindex-residents` fills id_birth_index.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from server.store.fieldcrypto import FieldCipher

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 2000


def upgrade() -> None:
    with op.batch_alter_table("residents") as table:
        table.add_column(sa.Column("id_prefix_index", sa.LargeBinary(32)))
        table.add_column(sa.Column("id_birth_index", sa.LargeBinary(32)))
        table.create_index("ix_residents_id_prefix_index", ["id_prefix_index"])
        table.create_index("ix_residents_id_birth_index", ["id_birth_index"])
    config = op.get_context().config
    key = config.attributes.get("field_key") if config is not None else None
    if key:
        fill_birth_index(op.get_bind(), FieldCipher(key))


def fill_birth_index(connection: sa.Connection, cipher: FieldCipher) -> None:
    residents = sa.table(
        "residents",
        sa.column("id", sa.Integer),
        sa.column("birth_date_enc", sa.LargeBinary),
        sa.column("id_number_last4", sa.String),
        sa.column("id_birth_index", sa.LargeBinary),
    )
    update = (
        residents.update()
        .where(residents.c.id == sa.bindparam("row_id"))
        .values(id_birth_index=sa.bindparam("index"))
    )
    after = 0
    while True:
        rows = connection.execute(
            sa.select(residents.c.id, residents.c.birth_date_enc, residents.c.id_number_last4)
            .where(residents.c.id > after)
            .order_by(residents.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        connection.execute(
            update,
            [
                {
                    "row_id": row_id,
                    "index": cipher.id_birth_index(
                        cipher.decrypt_date("birth_date", birth_enc), last4
                    ),
                }
                for row_id, birth_enc, last4 in rows
            ],
        )
        after = rows[-1][0]


def downgrade() -> None:
    with op.batch_alter_table("residents") as table:
        table.drop_index("ix_residents_id_birth_index")
        table.drop_index("ix_residents_id_prefix_index")
        table.drop_column("id_birth_index")
        table.drop_column("id_prefix_index")
