"""The PIV command set (NIST SP 800-73-4 part 2, with the Yubico extensions GET VERSION,
GET SERIAL and SET MANAGEMENT KEY) over any `Connection`.

`PivSession` is the host side: it builds the commands, parses the answers and turns status
words into typed errors. The wire constants live here too, and the virtual card (vcard.py)
shares them, so the two sides cannot disagree.
"""

from __future__ import annotations

import hmac
import os
from enum import IntEnum, unique

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from . import tlv
from .apdu import SW, ApduProcessor, Connection, error_for
from .errors import (
    ApduError,
    ApplicationNotAvailableError,
    AuthenticationError,
    BadResponseError,
    InvalidPinError,
    PinBlockedError,
    TlvError,
)

PIV_AID = bytes.fromhex("A000000308000010000100")
PIV_PIX = PIV_AID[5:]
DEFAULT_MANAGEMENT_KEY = bytes.fromhex("010203040506070801020304050607080102030405060708")
DEFAULT_PIN = "123456"
DEFAULT_PUK = "12345678"
PIN_LENGTH = 8  # PIN and PUK are sent padded with 0xFF to 8 bytes

TAG_OBJECT_ID = 0x5C
TAG_OBJECT_DATA = 0x53
TAG_DYN_AUTH = 0x7C
TAG_AUTH_WITNESS = 0x80
TAG_AUTH_CHALLENGE = 0x81
TAG_AUTH_RESPONSE = 0x82
TAG_AUTH_EXPONENTIATION = 0x85
TAG_GEN_TEMPLATE = 0xAC
TAG_GEN_ALGORITHM = 0x80
TAG_PUBLIC_KEY = 0x7F49
TAG_EC_POINT = 0x86
TAG_APT = 0x61
TAG_DISCOVERY = 0x7E


@unique
class INS(IntEnum):
    VERIFY = 0x20
    CHANGE_REFERENCE = 0x24
    RESET_RETRY = 0x2C
    GENERATE_ASYMMETRIC = 0x47
    GENERAL_AUTHENTICATE = 0x87
    SELECT = 0xA4
    GET_RESPONSE = 0xC0
    GET_DATA = 0xCB
    PUT_DATA = 0xDB
    GET_SERIAL = 0xF8  # Yubico
    RESET = 0xFB  # Yubico
    GET_VERSION = 0xFD  # Yubico
    SET_MANAGEMENT_KEY = 0xFF  # Yubico


@unique
class Slot(IntEnum):
    AUTHENTICATION = 0x9A
    MANAGEMENT = 0x9B
    SIGNATURE = 0x9C
    KEY_MANAGEMENT = 0x9D
    CARD_AUTH = 0x9E


@unique
class KeyRef(IntEnum):
    """Key references of VERIFY, CHANGE REFERENCE DATA and RESET RETRY COUNTER."""

    PIN = 0x80
    PUK = 0x81


@unique
class Algorithm(IntEnum):
    """Cryptographic mechanism identifiers (SP 800-78-4 table 6-2) for asymmetric keys."""

    RSA1024 = 0x06
    RSA2048 = 0x07
    ECCP256 = 0x11
    ECCP384 = 0x14

    @property
    def curve(self) -> ec.EllipticCurve:
        if self is Algorithm.ECCP256:
            return ec.SECP256R1()
        if self is Algorithm.ECCP384:
            return ec.SECP384R1()
        raise ValueError(f"{self.name} is not an elliptic-curve algorithm")

    @property
    def field_size(self) -> int:
        return (self.curve.key_size + 7) // 8


@unique
class ManagementKeyType(IntEnum):
    """Symmetric algorithms of the card management key (slot 9B)."""

    TDES = 0x03
    AES128 = 0x08
    AES192 = 0x0A
    AES256 = 0x0C

    @property
    def key_length(self) -> int:
        return {0x03: 24, 0x08: 16, 0x0A: 24, 0x0C: 32}[self.value]

    @property
    def block_size(self) -> int:
        return 8 if self is ManagementKeyType.TDES else 16


@unique
class ObjectId(IntEnum):
    """PIV data object identifiers (SP 800-73-4 part 1, table 3) used by the one-card."""

    CAPABILITY = 0x5FC107
    CHUID = 0x5FC102
    AUTHENTICATION = 0x5FC105  # certificate for slot 9A
    FINGERPRINTS = 0x5FC103
    SECURITY = 0x5FC106
    FACIAL = 0x5FC108
    PRINTED = 0x5FC109
    SIGNATURE = 0x5FC10A  # certificate for slot 9C
    KEY_MANAGEMENT = 0x5FC10B  # certificate for slot 9D
    CARD_AUTH = 0x5FC101  # certificate for slot 9E
    KEY_HISTORY = 0x5FC10C
    IRIS = 0x5FC121
    DISCOVERY = 0x7E


CERTIFICATE_OBJECTS = {
    Slot.AUTHENTICATION: ObjectId.AUTHENTICATION,
    Slot.SIGNATURE: ObjectId.SIGNATURE,
    Slot.KEY_MANAGEMENT: ObjectId.KEY_MANAGEMENT,
    Slot.CARD_AUTH: ObjectId.CARD_AUTH,
}

TAG_CERTIFICATE = 0x70
TAG_CERT_INFO = 0x71
TAG_LRC = 0xFE


def object_id_bytes(object_id: int) -> bytes:
    return tlv.encode_tag(object_id)


def pad_pin(pin: str) -> bytes:
    """A PIN or PUK as the card takes it: ASCII, 6 to 8 characters, padded with 0xFF."""
    raw = pin.encode()
    if not 1 <= len(raw) <= PIN_LENGTH:
        raise ValueError("a PIN or PUK has 1 to 8 characters")
    return raw.ljust(PIN_LENGTH, b"\xff")


def management_cipher(key_type: ManagementKeyType, key: bytes) -> Cipher[modes.ECB]:
    """ECB block cipher of a management key, for the challenge-response (one block at a time)."""
    if len(key) != key_type.key_length:
        raise ValueError(f"a {key_type.name} management key has {key_type.key_length} bytes")
    if key_type is ManagementKeyType.TDES:
        return Cipher(TripleDES(key), modes.ECB())
    return Cipher(algorithms.AES(key), modes.ECB())


def encrypt_block(key_type: ManagementKeyType, key: bytes, block: bytes) -> bytes:
    encryptor = management_cipher(key_type, key).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def decrypt_block(key_type: ManagementKeyType, key: bytes, block: bytes) -> bytes:
    decryptor = management_cipher(key_type, key).decryptor()
    return decryptor.update(block) + decryptor.finalize()


def encode_ec_point(key: ec.EllipticCurvePublicKey) -> bytes:
    numbers = key.public_numbers()
    size = (key.curve.key_size + 7) // 8
    return b"\x04" + numbers.x.to_bytes(size, "big") + numbers.y.to_bytes(size, "big")


def certificate_object(certificate_der: bytes) -> bytes:
    """The contents of a PIV certificate object: certificate, CertInfo (uncompressed), LRC."""
    return (
        tlv.encode(TAG_CERTIFICATE, certificate_der)
        + tlv.encode(TAG_CERT_INFO, b"\x00")
        + tlv.encode(TAG_LRC)
    )


def parse_certificate_object(contents: bytes) -> bytes:
    """The certificate DER out of a PIV certificate object (compressed ones are refused)."""
    objects = tlv.parse_dict(contents)
    if TAG_CERTIFICATE not in objects:
        raise TlvError("certificate object without a certificate (tag 70)")
    info = objects.get(TAG_CERT_INFO, b"\x00")
    if info and info[0] & 0x01:
        raise BadResponseError("compressed certificates are not supported")
    return objects[TAG_CERTIFICATE]


class PivSession:
    """The PIV application of one card, reached through `connection`.

    `extended`: send extended-length APDUs (one APDU for a certificate). None asks the
    connection (`supports_extended`, from the card's ATR) and falls back to short APDUs.
    """

    def __init__(self, connection: Connection, *, extended: bool | None = None) -> None:
        if extended is None:
            extended = bool(getattr(connection, "supports_extended", False))
        self.connection = connection
        self.processor = ApduProcessor(connection, extended=extended)

    @property
    def apdu_count(self) -> int:
        """How many APDUs this session has exchanged (for the benchmarks)."""
        return self.processor.apdu_count

    def _send(
        self, ins: int, p1: int, p2: int, data: bytes = b"", *, ne: int | None = None
    ) -> bytes:
        return self.processor.send(0x00, ins, p1, p2, data, ne=ne)

    # --- application ------------------------------------------------------------------------

    def select(self) -> bytes:
        """SELECT the PIV application; return its application property template (tag 61)."""
        data, sw = self.processor.transmit(0x00, INS.SELECT, 0x04, 0x00, PIV_AID)
        if sw == SW.FILE_NOT_FOUND:
            raise ApplicationNotAvailableError(sw, data)
        if sw != SW.OK:
            raise error_for(sw, data)
        return data

    def get_version(self) -> tuple[int, int, int]:
        data = self._send(INS.GET_VERSION, 0, 0)
        if len(data) != 3:
            raise BadResponseError(f"GET VERSION answered {data.hex()}")
        return data[0], data[1], data[2]

    def get_serial(self) -> int:
        data = self._send(INS.GET_SERIAL, 0, 0)
        if len(data) != 4:
            raise BadResponseError(f"GET SERIAL answered {data.hex()}")
        return int.from_bytes(data, "big")

    # --- data objects -------------------------------------------------------------------------

    def get_object(self, object_id: int) -> bytes:
        """GET DATA: the contents of a data object (inside tag 53; the discovery object whole)."""
        request = tlv.encode(TAG_OBJECT_ID, object_id_bytes(object_id))
        data = self._send(INS.GET_DATA, 0x3F, 0xFF, request)
        expected = TAG_DISCOVERY if object_id == ObjectId.DISCOVERY else TAG_OBJECT_DATA
        try:
            return tlv.unpack(expected, data)
        except TlvError as exc:
            raise BadResponseError(f"GET DATA {object_id:X}: {exc}") from exc

    def put_object(self, object_id: int, contents: bytes | None) -> None:
        """PUT DATA (management key needed); `None` deletes the object."""
        request = tlv.encode(TAG_OBJECT_ID, object_id_bytes(object_id)) + tlv.encode(
            TAG_OBJECT_DATA, contents or b""
        )
        self._send(INS.PUT_DATA, 0x3F, 0xFF, request, ne=0)

    def get_certificate(self, slot: Slot) -> bytes:
        return parse_certificate_object(self.get_object(CERTIFICATE_OBJECTS[slot]))

    def put_certificate(self, slot: Slot, certificate_der: bytes) -> None:
        self.put_object(CERTIFICATE_OBJECTS[slot], certificate_object(certificate_der))

    # --- keys ---------------------------------------------------------------------------------

    def generate_key(
        self, slot: Slot, algorithm: Algorithm = Algorithm.ECCP256
    ) -> ec.EllipticCurvePublicKey:
        """GENERATE ASYMMETRIC KEY PAIR in `slot` (management key needed); return the public key."""
        template = tlv.encode(TAG_GEN_TEMPLATE, tlv.encode(TAG_GEN_ALGORITHM, bytes([algorithm])))
        data = self._send(INS.GENERATE_ASYMMETRIC, 0x00, slot, template)
        try:
            point = tlv.find(TAG_EC_POINT, tlv.unpack(TAG_PUBLIC_KEY, data))
        except TlvError as exc:
            raise BadResponseError(f"GENERATE answered {data.hex()}: {exc}") from exc
        if point is None:
            raise BadResponseError("GENERATE answered without an EC point (tag 86)")
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(algorithm.curve, point)
        except ValueError as exc:
            raise BadResponseError(f"GENERATE answered an invalid point: {exc}") from exc

    def _general_authenticate(self, algorithm: int, slot: int, template: bytes) -> dict[int, bytes]:
        data = self._send(
            INS.GENERAL_AUTHENTICATE, algorithm, slot, tlv.encode(TAG_DYN_AUTH, template)
        )
        try:
            return tlv.parse_dict(tlv.unpack(TAG_DYN_AUTH, data))
        except TlvError as exc:
            raise BadResponseError(f"GENERAL AUTHENTICATE answered {data.hex()}: {exc}") from exc

    def sign_digest(
        self, slot: Slot, digest: bytes, algorithm: Algorithm = Algorithm.ECCP256
    ) -> bytes:
        """GENERAL AUTHENTICATE: ECDSA over `digest` (a hash the size of the curve) → DER."""
        answer = self._general_authenticate(
            algorithm,
            slot,
            tlv.encode(TAG_AUTH_RESPONSE) + tlv.encode(TAG_AUTH_CHALLENGE, digest),
        )
        if TAG_AUTH_RESPONSE not in answer:
            raise BadResponseError("GENERAL AUTHENTICATE answered without a signature (tag 82)")
        return answer[TAG_AUTH_RESPONSE]

    def calculate_secret(
        self, slot: Slot, peer: ec.EllipticCurvePublicKey, algorithm: Algorithm = Algorithm.ECCP256
    ) -> bytes:
        """GENERAL AUTHENTICATE: ECDH with the key in `slot` and `peer` → shared secret."""
        answer = self._general_authenticate(
            algorithm,
            slot,
            tlv.encode(TAG_AUTH_RESPONSE)
            + tlv.encode(TAG_AUTH_EXPONENTIATION, encode_ec_point(peer)),
        )
        if TAG_AUTH_RESPONSE not in answer:
            raise BadResponseError("GENERAL AUTHENTICATE answered without a secret (tag 82)")
        return answer[TAG_AUTH_RESPONSE]

    def authenticate(
        self, management_key: bytes, key_type: ManagementKeyType = ManagementKeyType.TDES
    ) -> None:
        """Mutual authentication with the card management key (9B).

        Card: encrypted witness. Host: the witness decrypted and a challenge of its own. Card: the
        challenge encrypted, which proves the card holds the same key.
        """
        try:
            answer = self._general_authenticate(
                key_type, Slot.MANAGEMENT, tlv.encode(TAG_AUTH_WITNESS)
            )
        except ApduError as exc:
            if exc.sw in (SW.INCORRECT_PARAMETERS, SW.INCORRECT_P1P2):
                raise AuthenticationError(
                    f"the card's management key is not {key_type.name}"
                ) from exc
            raise
        witness = answer.get(TAG_AUTH_WITNESS, b"")
        if len(witness) != key_type.block_size:
            raise BadResponseError(f"management-key witness of {len(witness)} bytes")
        challenge = os.urandom(key_type.block_size)
        template = tlv.encode(
            TAG_AUTH_WITNESS, decrypt_block(key_type, management_key, witness)
        ) + tlv.encode(TAG_AUTH_CHALLENGE, challenge)
        try:
            answer = self._general_authenticate(key_type, Slot.MANAGEMENT, template)
        except ApduError as exc:
            if exc.sw == SW.SECURITY_CONDITION_NOT_SATISFIED:
                raise AuthenticationError("wrong management key") from exc
            raise
        expected = encrypt_block(key_type, management_key, challenge)
        if not hmac.compare_digest(answer.get(TAG_AUTH_RESPONSE, b""), expected):
            raise AuthenticationError("the card did not prove it holds the management key")

    def set_management_key(self, key_type: ManagementKeyType, key: bytes) -> None:
        """SET MANAGEMENT KEY (Yubico extension; the current key must be authenticated)."""
        if len(key) != key_type.key_length:
            raise ValueError(f"a {key_type.name} management key has {key_type.key_length} bytes")
        data = bytes([key_type]) + tlv.encode(Slot.MANAGEMENT, key)
        self._send(INS.SET_MANAGEMENT_KEY, 0xFF, 0xFF, data, ne=0)

    # --- PIN and PUK --------------------------------------------------------------------------

    def _reference_command(self, ins: int, key: KeyRef, data: bytes) -> None:
        _, sw = self.processor.transmit(0x00, ins, 0x00, key, data, ne=0)
        if sw == SW.OK:
            return
        puk = key == KeyRef.PUK or ins == INS.RESET_RETRY
        if sw >> 4 == 0x63C:
            raise InvalidPinError(sw & 0x0F, sw, puk=puk)
        if sw == SW.AUTH_METHOD_BLOCKED:
            raise PinBlockedError(sw, puk=puk)
        raise error_for(sw)

    def verify_pin(self, pin: str) -> None:
        """VERIFY the PIN; raises `InvalidPinError` with the attempts left, or `PinBlockedError`."""
        self._reference_command(INS.VERIFY, KeyRef.PIN, pad_pin(pin))

    def get_pin_attempts(self) -> int:
        """Attempts left for the PIN (VERIFY without data); 0 when blocked."""
        _, sw = self.processor.transmit(0x00, INS.VERIFY, 0x00, KeyRef.PIN, b"", ne=0)
        if sw >> 4 == 0x63C:
            return sw & 0x0F
        if sw == SW.AUTH_METHOD_BLOCKED:
            return 0
        if sw == SW.OK:  # already verified: the card does not say
            return -1
        raise error_for(sw)

    def change_pin(self, old_pin: str, new_pin: str) -> None:
        self._reference_command(
            INS.CHANGE_REFERENCE, KeyRef.PIN, pad_pin(old_pin) + pad_pin(new_pin)
        )

    def change_puk(self, old_puk: str, new_puk: str) -> None:
        self._reference_command(
            INS.CHANGE_REFERENCE, KeyRef.PUK, pad_pin(old_puk) + pad_pin(new_puk)
        )

    def unblock_pin(self, puk: str, new_pin: str) -> None:
        """RESET RETRY COUNTER: a new PIN, and its counter reset, with the PUK."""
        self._reference_command(INS.RESET_RETRY, KeyRef.PIN, pad_pin(puk) + pad_pin(new_pin))
