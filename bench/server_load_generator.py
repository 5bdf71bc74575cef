"""The load generator of bench/bench_server.py: N simulated kiosks in one lean process.

It runs as its own process so that its CPU is visible and separate from the server's. One asyncio
event loop holds one keep-alive HTTP/1.1 connection per kiosk and speaks raw HTTP (no client
library: `requests` costs more CPU per call than the server's whole no-op answer). The authorize
requests -- card proof (ECDSA P-256) and request signature (Ed25519) -- are signed before the clock
starts; only the captures, whose path names the authorization the server just made, are signed
during the run (one Ed25519 signature each).

    python bench/server_load_generator.py SPEC.json kiosk|noop SECONDS
    python bench/server_load_generator.py SPEC.json paced SECONDS RATE

kiosk: each kiosk taps again as soon as its last tap is settled (closed loop: saturation).
paced: taps arrive at random at RATE per second in all (open loop: latency at a given load).
noop: GET /api/v1/server-key in a closed loop (a public call that reads no database: the
    framework and the WSGI server alone; /api/v1/health now checks the database).

SPEC.json: {"host", "port", "kiosks": [{"id", "key": base64 raw Ed25519 private key,
"cards": [[guid hex, base64 PKCS8 DER P-256 private key], ...], "counter": first counter}]}.
Prints one JSON object: pairs or requests done, elapsed seconds, latencies in ms, errors, and the
process's own CPU seconds.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import resource
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_der_private_key

from cardsvc import requestsig
from cardsvc.verify import TapChallenge

PRESIGNED_PER_KIOSK = 50  # authorize requests signed ahead (per kiosk); more are signed on the fly


@dataclass
class SimKiosk:
    id: str
    key: Ed25519PrivateKey
    cards: list[tuple[bytes, ec.EllipticCurvePrivateKey]]
    counter: int
    presigned: list[bytes] = field(default_factory=list)
    authorize_ms: list[float] = field(default_factory=list)
    capture_ms: list[float] = field(default_factory=list)
    requests: int = 0
    errors: list[str] = field(default_factory=list)


def signed_request(kiosk: SimKiosk, host: str, path: str, body: dict[str, Any]) -> bytes:
    raw = json.dumps(body, separators=(",", ":")).encode()
    headers = requestsig.sign(
        kiosk.key, kiosk.id, "POST", path, int(time.time()), secrets.token_hex(16), raw
    ).as_dict()
    head = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    head += [f"Idempotency-Key: {secrets.token_hex(12)}", f"Content-Length: {len(raw)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + raw


def authorize_request(kiosk: SimKiosk, host: str) -> bytes:
    kiosk.counter += 1
    guid, card_key = kiosk.cards[kiosk.counter % len(kiosk.cards)]
    challenge = TapChallenge(
        kiosk.id, kiosk.counter, int(time.time() * 1000), secrets.token_bytes(16), guid
    )
    proof = challenge.to_json(card_key.sign(challenge.to_bytes(), ec.ECDSA(hashes.SHA256())))
    return signed_request(kiosk, host, "/api/v1/authorizations", {"proof": proof, "slot": 1})


class Link:
    """One kiosk's HTTP/1.1 connection: kept alive, and opened again when the server closes it
    (gunicorn's sync worker answers every request with `Connection: close`)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        body = await self.reader.readexactly(length) if length else b""
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def tap(kiosk: SimKiosk, host: str, link: Link, i: int, started: float) -> None:
    """One tap: authorize, then capture. Latencies count from `started` (for paced kiosks, the
    moment the tap was due, so a late start is counted: no coordinated omission)."""
    request = kiosk.presigned[i] if i < len(kiosk.presigned) else authorize_request(kiosk, host)
    status, body = await link.exchange(request)
    t1 = time.perf_counter()
    answer = json.loads(body) if status == 200 else {}
    if status != 200 or not answer.get("approved"):
        kiosk.errors.append(f"authorize: {status} {body[:200]!r}")
        return
    capture = signed_request(
        kiosk,
        host,
        f"/api/v1/authorizations/{answer['authorization_id']}/capture",
        {"board_txn": i},
    )
    t2 = time.perf_counter()
    status, body = await link.exchange(capture)
    t3 = time.perf_counter()
    if status != 200:
        kiosk.errors.append(f"capture: {status} {body[:200]!r}")
        return
    kiosk.authorize_ms.append((t1 - started) * 1000)
    kiosk.capture_ms.append((t3 - t2) * 1000)


async def drive_kiosk(kiosk: SimKiosk, host: str, port: int, deadline: float) -> None:
    """Closed loop: the next tap as soon as the last one is settled (the server's saturation)."""
    link = Link(host, port)
    i = 0
    try:
        while time.perf_counter() < deadline:
            await tap(kiosk, host, link, i, time.perf_counter())
            i += 1
    finally:
        link.close()


async def drive_paced(
    kiosk: SimKiosk, host: str, port: int, deadline: float, rate: float, rng: random.Random
) -> None:
    """Open loop: taps arrive at random (Poisson, `rate` per second for this kiosk), as people
    walk up, whether or not the server kept up; a tap due while the last is still in flight
    waits for it, as a person waits at a busy kiosk, and that wait counts. The kiosk connects
    when its first tap is due (as an HTTP client does) and keeps the connection alive after."""
    link = Link(host, port)
    i = 0
    due = time.perf_counter() + rng.expovariate(rate)
    try:
        while due < deadline:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await tap(kiosk, host, link, i, due)
            i += 1
            due += rng.expovariate(rate)
    finally:
        link.close()


async def drive_noop(kiosk: SimKiosk, host: str, port: int, deadline: float) -> None:
    link = Link(host, port)
    request = f"GET /api/v1/server-key HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    try:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            status, body = await link.exchange(request)
            if status != 200:
                kiosk.errors.append(f"server-key: {status} {body[:200]!r}")
                continue
            kiosk.authorize_ms.append((time.perf_counter() - t0) * 1000)
    finally:
        link.close()


def load_kiosks(spec: dict[str, Any]) -> list[SimKiosk]:
    kiosks = []
    for k in spec["kiosks"]:
        cards = [
            (bytes.fromhex(guid), load_der_private_key(base64.b64decode(der), None))
            for guid, der in k["cards"]
        ]
        key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(k["key"]))
        kiosks.append(SimKiosk(k["id"], key, cards, k["counter"]))  # type: ignore[arg-type]
    return kiosks


async def main_async(
    spec: dict[str, Any], mode: str, seconds: float, rate: float = 0.0
) -> dict[str, Any]:
    host, port = spec["host"], spec["port"]
    kiosks = load_kiosks(spec)
    if mode in ("kiosk", "paced"):
        ahead = PRESIGNED_PER_KIOSK
        if mode == "paced":  # enough for this run's expected taps, with room for chance
            ahead = int(rate / len(kiosks) * seconds * 1.5) + 10
        for kiosk in kiosks:
            kiosk.presigned = [authorize_request(kiosk, host) for _ in range(ahead)]
    # Several generators started together (bench_server_ab.py) begin at one wall-clock moment,
    # whatever their start-up and signing took.
    late = 0.0
    if spec.get("start_at"):
        wait = spec["start_at"] - time.time()
        late = max(0.0, -wait)
        await asyncio.sleep(max(0.0, wait))
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    began = time.perf_counter()
    deadline = began + seconds
    if mode == "paced":
        rng = random.Random(1)
        each = rate / len(kiosks)
        await asyncio.gather(*(drive_paced(k, host, port, deadline, each, rng) for k in kiosks))
    else:
        drive = drive_kiosk if mode == "kiosk" else drive_noop
        await asyncio.gather(*(drive(k, host, port, deadline) for k in kiosks))
    elapsed = time.perf_counter() - began
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "mode": mode,
        "elapsed": elapsed,
        "authorize_ms": [v for k in kiosks for v in k.authorize_ms],
        "capture_ms": [v for k in kiosks for v in k.capture_ms],
        "errors": [e for k in kiosks for e in k.errors],
        "cpu_seconds": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
        "counters": {k.id: k.counter for k in kiosks},
        "late_seconds": late,
    }


def main() -> int:
    spec_path, mode, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    rate = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    with open(spec_path) as f:
        spec = json.load(f)
    result = asyncio.run(main_async(spec, mode, seconds, rate))
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
