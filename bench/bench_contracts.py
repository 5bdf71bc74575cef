"""Benchmark of request validation at the API boundary: what a declared contract costs per call.

The body of the hottest call (`POST /api/v1/authorizations`: a tap proof, a slot, a quantity) is
validated the ways we weighed for server/http/contracts.py:
- baseline: `json.loads` alone (parsing, no checks at all);
- pydantic v2 `model_validate_json` on the contract the server uses (server.api.kiosk);
- msgspec `json.decode(type=...)` on an equivalent Struct with the same limits;
and for a hostile body (40,000 nested arrays, under the 64 KiB body limit) how fast each says no.
Each figure is the median of 5 rounds of N calls, printed as microseconds per call and as a ratio
to the baseline measured in the same run.

    .venv/bin/python bench/bench_contracts.py [--calls 20000]
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import ValidationError  # noqa: E402

from server.api.kiosk import AuthorizeRequest  # noqa: E402
from server.http.contracts import HEX32_PATTERN, MAX_QUANTITY, MAX_SLOT  # noqa: E402

try:
    import msgspec
except ImportError:  # the dev extra installs it; the figure is then left out, and said so
    msgspec = None  # type: ignore[assignment]

BODY = json.dumps(
    {
        "proof": {
            "kiosk_id": "K-0001",
            "counter": 123456,
            "time_ms": 1_765_000_000_000,
            "nonce": secrets.token_hex(16),
            "card_guid": secrets.token_hex(16),
            "signature": "MEUCIQ" + "A" * 90,
        },
        "slot": 3,
        "quantity": 1,
    }
).encode()
HOSTILE = b'{"slot": 1, "x": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"


# msgspec cannot bound an integer beyond int64 (a tap counter may reach 2**64 - 1): the Struct
# stops at 2**63 - 1, one of the reasons server/http/contracts.py uses pydantic.
I64 = 2**63 - 1
if msgspec is not None:
    Hex32 = Annotated[str, msgspec.Meta(pattern=HEX32_PATTERN)]

    class MsgspecProof(msgspec.Struct):
        kiosk_id: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
        counter: Annotated[int, msgspec.Meta(ge=0, le=I64)]
        time_ms: Annotated[int, msgspec.Meta(ge=0, le=I64)]
        nonce: Hex32
        card_guid: Hex32
        signature: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]

    class MsgspecAuthorize(msgspec.Struct):
        proof: MsgspecProof
        slot: Annotated[int, msgspec.Meta(ge=0, le=MAX_SLOT)]
        quantity: Annotated[int, msgspec.Meta(ge=1, le=MAX_QUANTITY)] = 1


def msgspec_contract() -> Any:
    return None if msgspec is None else MsgspecAuthorize


def per_call_us(function: Callable[[], object], calls: int) -> float:
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls):
            function()
        rounds.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(rounds)


def refuses(function: Callable[[], object]) -> Callable[[], object]:
    def attempt() -> object:
        try:
            function()
        except (ValidationError, ValueError, RecursionError):
            return None
        raise AssertionError("the hostile body was accepted")

    return attempt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    calls = args.calls
    baseline = per_call_us(lambda: json.loads(BODY), calls)
    pydantic_us = per_call_us(lambda: AuthorizeRequest.model_validate_json(BODY), calls)
    print(f"validating an authorize body ({len(BODY)} bytes), median of 5 x {calls} calls:")
    print(f"  json.loads only (baseline)      {baseline:6.2f} us")
    print(
        f"  pydantic v2 model_validate_json {pydantic_us:6.2f} us  ({pydantic_us / baseline:.2f}x baseline)"
    )
    struct = msgspec_contract()
    if struct is not None:
        decoder = msgspec.json.Decoder(struct)
        msgspec_us = per_call_us(lambda: decoder.decode(BODY), calls)
        print(
            f"  msgspec json.decode(type=...)   {msgspec_us:6.2f} us  ({msgspec_us / baseline:.2f}x baseline)"
        )
    else:
        print("  msgspec: not installed (pip install msgspec), left out")
    hostile_calls = max(1, calls // 100)
    print(f"refusing {len(HOSTILE)} bytes nested 30,000 deep, median of 5 x {hostile_calls} calls:")
    stdlib = per_call_us(refuses(lambda: json.loads(HOSTILE)), hostile_calls)
    print(f"  json.loads (RecursionError)     {stdlib:8.1f} us")
    refused = per_call_us(
        refuses(lambda: AuthorizeRequest.model_validate_json(HOSTILE)), hostile_calls
    )
    print(
        f"  pydantic v2 (json_invalid)      {refused:8.1f} us  ({refused / stdlib:.2f}x json.loads)"
    )
    if struct is not None:
        decoder = msgspec.json.Decoder(struct)

        def msgspec_hostile() -> object:
            try:
                return decoder.decode(HOSTILE)
            except msgspec.DecodeError as exc:
                raise ValueError(str(exc)) from None

        refused_m = per_call_us(refuses(msgspec_hostile), hostile_calls)
        print(
            f"  msgspec                         {refused_m:8.1f} us  ({refused_m / stdlib:.2f}x json.loads)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
