"""The city card CA: a P-256 key and a self-signed certificate kept as files in a directory,
and the card certificates it issues.

Layout of the directory:
    ca-key.pem   PKCS#8 PEM, unencrypted, mode 0600 (the demo's CA; a real city keeps it in an HSM)
    ca-cert.pem  PEM

A card certificate (for the card-authentication key, PIV slot 9E) carries only:
- the card GUID, as subjectAltName URI ``urn:uuid:<GUID>`` (as FIPS 201 places the card UUID)
  and, for people reading it, as the subject CN (the same UUID string);
- its validity; and its issuer (the city card CA).
No name, no ID number, no health data. Extensions: basicConstraints CA:FALSE, keyUsage
digitalSignature, extendedKeyUsage id-PIV-cardAuth (2.16.840.1.101.3.6.8), the key identifiers;
and for a staff card (`issue(..., role=CardRole.STAFF)`) certificatePolicies with
`cardsvc.verify.STAFF_CARD_POLICY`, which tells a staff card from a resident's (verify.card_role).

A staff card has a second certificate, for its PIV authentication key (slot 9A, which the card
uses only after its PIN): `issue(..., role=CardRole.STAFF, pin_bound=True)` names the same GUID
and validity, extendedKeyUsage clientAuth instead of id-PIV-cardAuth, and the policies
STAFF_CARD_POLICY and `cardsvc.verify.STAFF_SIGN_IN_POLICY` (the only certificate staff sign-in
accepts). `staff_issuer()` makes both at issuance (cardsvc.provision.provision_card).

The CA also signs CHUIDs: a detached CMS SignedData over the CHUID's objects before tag 3E.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from .verify import STAFF_CARD_POLICY, STAFF_SIGN_IN_POLICY, CardRole

KEY_FILE = "ca-key.pem"
CERT_FILE = "ca-cert.pem"
DEFAULT_CA_NAME = "OneCard City Card CA"
ID_PIV_CARD_AUTH = ObjectIdentifier("2.16.840.1.101.3.6.8")


@dataclass
class CardCA:
    """The city card CA loaded in memory."""

    private_key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    directory: Path | None = None

    @property
    def certificate_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def certificate_path(self) -> Path:
        """The CA certificate's PEM file (what kiosks and the server are configured with)."""
        if self.directory is None:
            raise ValueError("this CA was not loaded from a directory")
        return self.directory / CERT_FILE

    @property
    def key_path(self) -> Path:
        if self.directory is None:
            raise ValueError("this CA was not loaded from a directory")
        return self.directory / KEY_FILE

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike[str],
        *,
        name: str = DEFAULT_CA_NAME,
        valid_days: int = 20 * 365,
        now: datetime | None = None,
    ) -> CardCA:
        """Make a new CA in `directory` (created if missing); refuses to overwrite one."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        if (path / KEY_FILE).exists() or (path / CERT_FILE).exists():
            raise FileExistsError(f"a card CA already exists in {path}")
        now = now or datetime.now(UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OneCard"),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(path / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key_pem)
        (path / CERT_FILE).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return cls(key, certificate, path)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> CardCA:
        path = Path(directory)
        key = serialization.load_pem_private_key((path / KEY_FILE).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path / KEY_FILE} is not an EC key")
        certificate = x509.load_pem_x509_certificate((path / CERT_FILE).read_bytes())
        return cls(key, certificate, path)

    @classmethod
    def load_or_create(cls, directory: str | os.PathLike[str]) -> CardCA:
        path = Path(directory)
        if (path / KEY_FILE).exists():
            return cls.load(path)
        return cls.create(path)

    def issue(
        self,
        public_key: ec.EllipticCurvePublicKey,
        guid: bytes,
        not_after: datetime,
        *,
        not_before: datetime | None = None,
        role: CardRole = CardRole.RESIDENT,
        pin_bound: bool = False,
    ) -> bytes:
        """A card certificate (DER) for a card's 9E public key and its 16-byte GUID; a staff
        card's carries the staff certificate policy. `pin_bound`: the staff card's 9A
        (PIV authentication) certificate instead, the one staff sign-in accepts."""
        if len(guid) != 16:
            raise ValueError("a card GUID has 16 bytes")
        if pin_bound and role is not CardRole.STAFF:
            raise ValueError("only a staff card has a PIN-bound sign-in certificate")
        card_uuid = str(uuid.UUID(bytes=guid))
        not_before = not_before or datetime.now(UTC) - timedelta(minutes=5)
        ca_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, card_uuid)]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH] if pin_bound else [ID_PIV_CARD_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"urn:uuid:{card_uuid}")]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
        )
        if role is CardRole.STAFF:
            policies = [STAFF_CARD_POLICY, *([STAFF_SIGN_IN_POLICY] if pin_bound else [])]
            builder = builder.add_extension(
                x509.CertificatePolicies([x509.PolicyInformation(p, None) for p in policies]),
                critical=False,
            )
        return builder.sign(self.private_key, hashes.SHA256()).public_bytes(
            serialization.Encoding.DER
        )

    def staff_issuer(self) -> StaffCardIssuer:
        """This CA as `cardsvc.provision.SignInCardIssuer` for a staff card (its certificates
        carry the staff policy; the 9A one is PIN-bound):
        `provision_card(piv, ca.staff_issuer(), pin=...)`."""
        return StaffCardIssuer(self)

    def sign_detached(self, content: bytes) -> bytes:
        """A detached CMS SignedData (DER) over `content`, signer certificate included."""
        return (
            pkcs7.PKCS7SignatureBuilder()
            .set_data(content)
            .add_signer(self.certificate, self.private_key, hashes.SHA256())
            .sign(
                serialization.Encoding.DER,
                [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.NoCapabilities],
            )
        )


@dataclass(frozen=True)
class StaffCardIssuer:
    """A card CA that certifies staff cards (role STAFF): the 9E certificate, as a resident
    card's, and the PIN-bound 9A certificate staff sign in with (cardsvc.provision)."""

    ca: CardCA

    def issue(
        self, public_key: ec.EllipticCurvePublicKey, guid: bytes, not_after: datetime
    ) -> bytes:
        return self.ca.issue(public_key, guid, not_after, role=CardRole.STAFF)

    def issue_sign_in(
        self, public_key: ec.EllipticCurvePublicKey, guid: bytes, not_after: datetime
    ) -> bytes:
        return self.ca.issue(public_key, guid, not_after, role=CardRole.STAFF, pin_bound=True)

    def sign_detached(self, content: bytes) -> bytes:
        return self.ca.sign_detached(content)
