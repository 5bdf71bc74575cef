"""Benchmark: the card joint through pcscd + vpcd + pyscard, and the pure verifier.

Measures (the virtual card runs in a thread of this process, the kiosk side goes through pcscd
exactly as in production):
- one APDU's round trip through pcscd (GET VERSION), median and p95;
- provisioning per card (GENERATE, CA signature, PUT DATA certificate and CHUID), with the
  card's own processing, the CA's signing and the rest (host code + transport) shown apart;
- tap to verified identity (connect, SELECT, CHUID, certificate, GENERAL AUTHENTICATE, offline
  verification) over N taps: median and p95, with the APDUs counted; again with the kiosk's
  certificate cache (the card's certificate seen before);
- throughput of the pure verifier (verify_tap) in one thread.

    .venv/bin/python bench/bench_card.py [--taps 200] [--cards 20] [--port 35964]

Uses the running pcscd, or starts `pcscd --foreground` and stops it (by pid) at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from cardsvc.ca import CardCA
from cardsvc.errors import PcscdUnavailableError
from cardsvc.pcsc import PcscReader, list_readers
from cardsvc.piv import PivSession
from cardsvc.profile import TapChallenge, prove, read_card
from cardsvc.provision import provision_card
from cardsvc.vcard import VirtualPivCard
from cardsvc.verify import verify_tap
from cardsvc.vpcd import VpcdLink


class TimedCard(VirtualPivCard):
    """The virtual card, adding up the time it spends answering."""

    card_seconds = 0.0

    def process(self, apdu: bytes) -> bytes:
        start = time.perf_counter()
        try:
            return super().process(apdu)
        finally:
            self.card_seconds += time.perf_counter() - start


class TimedCA(CardCA):
    ca_seconds = 0.0

    def issue(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        try:
            return super().issue(*args, **kwargs)
        finally:
            self.ca_seconds += time.perf_counter() - start

    def sign_detached(self, content: bytes) -> bytes:
        start = time.perf_counter()
        try:
            return super().sign_detached(content)
        finally:
            self.ca_seconds += time.perf_counter() - start


@contextmanager
def pcscd_running() -> Iterator[None]:
    try:
        list_readers()
        yield
        return
    except PcscdUnavailableError:
        pass
    binary = shutil.which("pcscd") or "/usr/sbin/pcscd"
    process = subprocess.Popen(
        [binary, "--foreground"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if any(r.startswith("Virtual PCD") for r in list_readers()):
                    break
            except PcscdUnavailableError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(
                    "pcscd did not come up with the vpcd readers (apt-get install pcscd vsmartcard-vpcd)"
                )
            time.sleep(0.1)
        yield
    finally:
        process.terminate()
        process.wait(10)


def ms(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]
    return f"median {statistics.median(values) * 1000:7.2f} ms   p95 {p95 * 1000:7.2f} ms   (n={len(values)})"


def timed(fn: Callable[[], object], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--taps", type=int, default=200)
    parser.add_argument("--cards", type=int, default=20)
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("ONECARD_TEST_VPCD_PORT", "35964"))
    )
    args = parser.parse_args()
    reader_name = f"Virtual PCD 00 {args.port - 35963:02d}"
    work = Path(tempfile.mkdtemp(prefix="bench-card-"))
    with pcscd_running():
        ca = TimedCA.create(work / "ca")
        ca = TimedCA(ca.private_key, ca.certificate, ca.directory)
        reader = PcscReader(reader_name)

        # --- provisioning, one fresh card after another ---------------------------------------
        totals, card_parts, ca_parts = [], [], []
        card = TimedCard(work / "card-0.json")
        for index in range(args.cards):
            card = TimedCard(work / f"card-{index}.json")
            with VpcdLink(card, port=args.port) as link:
                link.insert()
                connection = reader.wait_for_card(timeout=10)
                if connection is None:
                    raise SystemExit(f"pcscd did not see the card in {reader_name}")
                with connection:
                    ca.ca_seconds = 0.0
                    start = time.perf_counter()
                    provision_card(PivSession(connection), ca)
                    totals.append(time.perf_counter() - start)
                    card_parts.append(card.card_seconds)
                    ca_parts.append(ca.ca_seconds)
                link.remove()
                reader.wait_for_removal(timeout=10)
        other = [t - c - a for t, c, a in zip(totals, card_parts, ca_parts, strict=True)]
        print(f"provisioning per card       {ms(totals)}")
        print(f"  card's own operations     {ms(card_parts)}")
        print(f"  CA signing (cert + CHUID)  {ms(ca_parts)}")
        print(f"  ours: host code + pcscd    {ms(other)}")

        # --- the last card stays in: APDU round trip and taps -------------------------------------
        with VpcdLink(card, port=args.port) as link:
            link.insert()
            connection = reader.wait_for_card(timeout=10)
            assert connection is not None
            with connection:
                piv = PivSession(connection)
                piv.select()
                rtt = timed(piv.get_version, 500)
            print(f"APDU round trip (GET VERSION) {ms(rtt)}")

            cache: dict[bytes, bytes] = {}
            for label, certificates in (
                ("tap, certificate read", None),
                ("tap, certificate cached", cache),
            ):
                samples, card_times, apdus = [], [], []
                for counter in range(args.taps):
                    card.card_seconds = 0.0
                    start = time.perf_counter()
                    with reader.wait_for_card(timeout=10) as connection:  # type: ignore[union-attr]
                        piv = PivSession(connection)
                        data = read_card(piv, certificates=certificates)
                        challenge = TapChallenge(
                            "K-BENCH", counter, int(time.time() * 1000), os.urandom(16), data.guid
                        )
                        signature = prove(piv, challenge)
                        verify_tap(data.certificate_der, ca.certificate_der, challenge, signature)
                    samples.append(time.perf_counter() - start)
                    card_times.append(card.card_seconds)
                    apdus.append(piv.apdu_count)
                    cache[data.guid] = data.certificate_der
                print(f"{label:<29} {ms(samples)}   APDUs per tap: {max(apdus)}")
                print(f"  of which the card itself   {ms(card_times)}")
                overhead = [s - c for s, c in zip(samples, card_times, strict=True)]
                print(f"  software overhead (ours)   {ms(overhead)}")
            link.remove()
        reader.close()

    # --- the pure verifier --------------------------------------------------------------------
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    guid = os.urandom(16)
    certificate = ca.issue(key.public_key(), guid, datetime(2040, 1, 1, tzinfo=UTC))
    challenge = TapChallenge("K-BENCH", 1, 1, os.urandom(16), guid)
    signature = key.sign(challenge.to_bytes(), ec.ECDSA(hashes.SHA256()))
    ca_der = ca.certificate_der
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        verify_tap(certificate, ca_der, challenge, signature)
    elapsed = time.perf_counter() - start
    print(
        f"verify_tap throughput       {n / elapsed:8.0f} taps/s in one thread ({elapsed / n * 1e6:.0f} µs each)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
