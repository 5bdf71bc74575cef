"""Interoperability: OpenSC, a PIV client written by others, reads our virtual card through
pcscd, finds the 9E certificate and key, and signs with 9E; openssl verifies the signature with
the certificate and the certificate with the city card CA."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from cryptography import x509

from cardsvc.ca import CardCA
from cardsvc.pcsc import PcscReader
from cardsvc.piv import DEFAULT_PIN, PivSession
from cardsvc.provision import provision_card
from tests.fixtures.pcscd import VirtualCardHandle

pytestmark = pytest.mark.pcscd

PKCS11_MODULES = [
    "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so",
    "/usr/lib/aarch64-linux-gnu/opensc-pkcs11.so",
    "/usr/lib/opensc-pkcs11.so",
]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing: apt-get install opensc")
        pytest.skip(f"{name} is not installed (apt-get install opensc)")
    return path


def _module() -> str:
    for candidate in PKCS11_MODULES:
        if Path(candidate).exists():
            return candidate
    if os.environ.get("CI") == "true":
        pytest.fail("opensc-pkcs11.so is missing: apt-get install opensc-pkcs11")
    pytest.skip("opensc-pkcs11.so is not installed")


def _run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{command}: {result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture
def provisioned(virtual_card: VirtualCardHandle, tmp_path: Path) -> tuple[CardCA, bytes]:
    ca = CardCA.create(tmp_path / "ca")
    with PcscReader(virtual_card.reader_name) as reader:
        connection = reader.wait_for_card(timeout=10)
        assert connection is not None
        with connection:
            issued = provision_card(PivSession(connection), ca)
    return ca, issued.guid


def test_opensc_lists_the_card_authentication_certificate(
    virtual_card: VirtualCardHandle, provisioned: tuple[CardCA, bytes]
) -> None:
    name = _run(_tool("opensc-tool"), "--reader", virtual_card.reader_name, "--name")
    assert "Personal Identity Verification Card" in name
    listing = _run(
        _tool("pkcs15-tool"), "--reader", virtual_card.reader_name, "--list-certificates"
    )
    assert "Certificate for Card Authentication" in listing
    assert "ID             : 04" in listing


def test_opensc_signs_with_9e_and_openssl_verifies(
    virtual_card: VirtualCardHandle, provisioned: tuple[CardCA, bytes], tmp_path: Path
) -> None:
    ca, guid = provisioned
    tool, module = _tool("pkcs11-tool"), _module()
    openssl = _tool("openssl")
    slot = ["--module", module, "--slot-description", virtual_card.reader_name]
    objects = _run(tool, *slot, "--list-objects")
    assert "CARD AUTH key" in objects
    assert f"CN={uuid.UUID(bytes=guid)}" in objects

    data, signature, cert_der = tmp_path / "data", tmp_path / "sig.der", tmp_path / "cert.der"
    data.write_bytes(b"ONECARD interop check")
    # pkcs11-tool logs in because the token asks for a PIN; 9E itself needs none.
    _run(
        tool,
        *slot,
        "--pin",
        DEFAULT_PIN,
        "--sign",
        "--id",
        "04",
        "-m",
        "ECDSA-SHA256",
        "--signature-format",
        "openssl",
        "-i",
        str(data),
        "-o",
        str(signature),
    )
    _run(tool, *slot, "--read-object", "--type", "cert", "--id", "04", "-o", str(cert_der))
    certificate = x509.load_der_x509_certificate(cert_der.read_bytes())
    public_pem = tmp_path / "pub.pem"
    cert_pem = tmp_path / "cert.pem"
    from cryptography.hazmat.primitives import serialization

    public_pem.write_bytes(
        certificate.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    cert_pem.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    assert "Verified OK" in _run(
        openssl,
        "dgst",
        "-sha256",
        "-verify",
        str(public_pem),
        "-signature",
        str(signature),
        str(data),
    )
    assert ": OK" in _run(openssl, "verify", "-CAfile", str(ca.certificate_path), str(cert_pem))
