"""The board drivers' errors (PROTOCOL.md 4.7, 5.5, 6.2): one hierarchy under ``BoardError``,
with structured fields; turned into words only on the kiosk screen and in its log."""

from __future__ import annotations


class BoardError(Exception):
    """Base of the board driver's errors."""


class BoardLinkError(BoardError):
    """The serial line itself failed (device gone, cannot be opened)."""


class BoardTimeoutError(BoardError):
    """No usable answer within the deadline, retries included.

    For a dispense, ``txn_id`` is set and the transaction is *unresolved*: the item may or
    may not have fallen. Keep it in the journal and ``query`` it later; never void it blindly.
    """

    def __init__(self, command: str, txn_id: int | None = None) -> None:
        what = f"{command} (txn {txn_id})" if txn_id is not None else command
        super().__init__(f"board did not answer {what}")
        self.command = command
        self.txn_id = txn_id


class BoardProtocolError(BoardError):
    """The board answered something the protocol does not allow here."""


class BoardRejectedError(BoardError):
    """The board refused a request with an ERROR reply (PROTOCOL.md 4.7)."""

    def __init__(self, command: str, error: str, detail: int = 0) -> None:
        super().__init__(f"board refused {command}: {error} (detail {detail})")
        self.command = command
        self.error = error
        self.detail = detail


class BoardBusyError(BoardRejectedError):
    """Another dispense is running on the board."""


class TxnIdReusedError(BoardError):
    """A DISPENSE for a transaction id the board already had a record of when this session
    began (PROTOCOL.md 6.2): the host's ids were reused (a lost or reset journal). Nothing was
    sent; the board would have answered with an old transaction's outcome. The host must move
    its ids above ``board_last`` (``Journal.continue_txn_ids_above``)."""

    def __init__(self, txn_id: int, board_last: int) -> None:
        super().__init__(
            f"txn {txn_id} is not above the board's last recorded txn {board_last}: "
            "the journal's ids were reused"
        )
        self.txn_id = txn_id
        self.board_last = board_last


class ModbusRefusedError(BoardError):
    """A Modbus exception response (raised by a ``RegisterLink``)."""

    def __init__(self, exception_code: int) -> None:
        super().__init__(f"Modbus exception {exception_code}")
        self.exception_code = exception_code
