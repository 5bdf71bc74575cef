"""The virtual PIV card: the applet's logic, pure (bytes in, bytes out, state in a JSON file).

Implements the subset of NIST SP 800-73-4 part 2 the one-card needs, as a real card does:
SELECT, GET DATA, PUT DATA, GENERATE ASYMMETRIC KEY PAIR (ECC P-256 and P-384), GENERAL
AUTHENTICATE (ECDSA, ECDH, and the management key's mutual and external authentication with
3DES or AES), VERIFY, CHANGE REFERENCE DATA, RESET RETRY COUNTER, GET RESPONSE; and the
Yubico extensions GET VERSION, GET SERIAL, SET MANAGEMENT KEY and RESET.

Transport features: short and extended APDUs, command chaining (CLA 10), response chaining
(61xx then GET RESPONSE) when the answer is longer than the Le asked for.

Access rules:
- free read: every object but the fingerprints, facial image, printed information and iris,
  which need the PIN;
- PUT DATA, GENERATE, SET MANAGEMENT KEY: the management key (9B) authenticated;
- 9E signs without a PIN (physical access); 9A and 9D need the PIN; 9C needs it just before
  each signature (PIN always);
- PIN and PUK: 3 tries each; a blocked PIN is unblocked with the PUK; RESET only when both
  are blocked.

The card's persistent memory (keys, objects, PINs, counters, management key) is a JSON file
written atomically after each change, so a card keeps its key across runs. The security status
(PIN verified, management key authenticated) lives only in memory and ends with `reset()`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from . import tlv
from .apdu import CLA_CHAINING, SW, CommandApdu
from .errors import BadResponseError, TlvError
from .piv import (
    DEFAULT_MANAGEMENT_KEY,
    DEFAULT_PIN,
    DEFAULT_PUK,
    INS,
    PIV_AID,
    PIV_PIX,
    TAG_APT,
    TAG_AUTH_CHALLENGE,
    TAG_AUTH_EXPONENTIATION,
    TAG_AUTH_RESPONSE,
    TAG_AUTH_WITNESS,
    TAG_DISCOVERY,
    TAG_DYN_AUTH,
    TAG_EC_POINT,
    TAG_GEN_ALGORITHM,
    TAG_GEN_TEMPLATE,
    TAG_OBJECT_DATA,
    TAG_OBJECT_ID,
    TAG_PUBLIC_KEY,
    Algorithm,
    KeyRef,
    ManagementKeyType,
    ObjectId,
    Slot,
    decrypt_block,
    encode_ec_point,
    encrypt_block,
    pad_pin,
)

logger = logging.getLogger(__name__)

STATE_FORMAT = 1
VERSION = (1, 0, 0)
MAX_TRIES = 3
MAX_OBJECT_SIZE = 4096
ASYMMETRIC_SLOTS = {Slot.AUTHENTICATION, Slot.SIGNATURE, Slot.KEY_MANAGEMENT, Slot.CARD_AUTH}
PIN_PROTECTED_OBJECTS = {ObjectId.FINGERPRINTS, ObjectId.FACIAL, ObjectId.PRINTED, ObjectId.IRIS}
_HASHES: dict[Algorithm, hashes.HashAlgorithm] = {
    Algorithm.ECCP256: hashes.SHA256(),
    Algorithm.ECCP384: hashes.SHA384(),
}


def _historical_bytes() -> bytes:
    # Category 80, then compact-TLV: card issuer's data (tag 4) "OneCard", and card
    # capabilities (tag 7): selection by full DF name; data coding 00; command chaining and
    # extended Lc/Le (third byte C0), so hosts know they may send extended APDUs.
    return b"\x80" + b"\x47OneCard" + b"\x73\x80\x00\xc0"


def _make_atr() -> bytes:
    # TS=3B (direct convention); T0: TD1 present + historical bytes; TD1=81: T=1, TD2 follows;
    # TD2=31: TA3 and TB3 for T=1; TA3=FE (IFSC 254); TB3=15 (BWI 1, CWI 5); then TCK.
    historical = _historical_bytes()
    body = bytes([0x80 | len(historical), 0x81, 0x31, 0xFE, 0x15]) + historical
    tck = 0
    for byte in body:
        tck ^= byte
    return b"\x3b" + body + bytes([tck])


ATR = _make_atr()


class _Refusal(Exception):
    def __init__(self, sw: int) -> None:
        self.sw = sw


def _fresh_state() -> dict[str, Any]:
    return {
        "format": STATE_FORMAT,
        "serial": secrets.randbelow(90_000_000) + 10_000_000,
        "pin": pad_pin(DEFAULT_PIN).hex(),
        "pin_tries": MAX_TRIES,
        "puk": pad_pin(DEFAULT_PUK).hex(),
        "puk_tries": MAX_TRIES,
        "management": {"type": int(ManagementKeyType.TDES), "key": DEFAULT_MANAGEMENT_KEY.hex()},
        "keys": {},
        "objects": {},
    }


@dataclass
class _Session:
    """The card's volatile security status: what a reset or power-off forgets."""

    pin_verified: bool = False
    pin_always: bool = False
    management: bool = False
    auth_pending: tuple[str, bytes] | None = None
    chain: tuple[int, int, int, bytearray] | None = None
    pending_response: bytes = b""


class VirtualPivCard:
    """A PIV card in software. `process(apdu)` answers one command APDU."""

    atr = ATR

    def __init__(self, state_path: str | os.PathLike[str] | None = None) -> None:
        self.state_path = Path(state_path) if state_path is not None else None
        if self.state_path is not None and self.state_path.exists():
            self.state = json.loads(self.state_path.read_text())
            if self.state.get("format") != STATE_FORMAT:
                raise ValueError(f"{self.state_path}: unknown card state format")
        else:
            self.state = _fresh_state()
            self._save()
        self.session = _Session()

    # --- persistence ----------------------------------------------------------------------

    def _save(self) -> None:
        if self.state_path is None:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.state_path.with_name(self.state_path.name + ".tmp")
        temporary.write_text(json.dumps(self.state, indent=1, sort_keys=True))
        os.replace(temporary, self.state_path)

    @property
    def serial(self) -> int:
        return int(self.state["serial"])

    def reset(self) -> None:
        """Power cycle: forget the security status, keep the persistent memory."""
        self.session = _Session()

    # --- APDU processing ------------------------------------------------------------------

    def process(self, apdu: bytes) -> bytes:
        """Answer one command APDU with a response APDU (data + SW1 SW2)."""
        try:
            command = CommandApdu.parse(apdu)
        except BadResponseError:
            return SW.WRONG_LENGTH.to_bytes(2, "big")
        session = self.session
        if command.ins == INS.GET_RESPONSE and command.cla & ~CLA_CHAINING == 0:
            if not session.pending_response:
                return SW.CONDITIONS_NOT_SATISFIED.to_bytes(2, "big")
            return self._respond(session.pending_response, command.ne)
        session.pending_response = b""
        if command.cla & ~CLA_CHAINING:
            return SW.CLA_NOT_SUPPORTED.to_bytes(2, "big")
        header = (command.ins, command.p1, command.p2)
        data = command.data
        if command.cla & CLA_CHAINING:
            if session.chain and session.chain[:3] == header:
                session.chain[3].extend(data)
            else:
                session.chain = (*header, bytearray(data))
            return SW.OK.to_bytes(2, "big")
        if session.chain:
            if session.chain[:3] == header:
                data = bytes(session.chain[3]) + data
            session.chain = None
        try:
            answer = self._dispatch(command.ins, command.p1, command.p2, data)
        except _Refusal as refusal:
            return refusal.sw.to_bytes(2, "big")
        except (TlvError, ValueError) as exc:
            logger.debug("refused %s: %s", apdu.hex(), exc)
            return SW.INCORRECT_PARAMETERS.to_bytes(2, "big")
        except Exception:  # a card never crashes: it answers "no precise diagnosis"
            logger.exception("the virtual card failed on %s", apdu.hex())
            return SW.UNKNOWN_ERROR.to_bytes(2, "big")
        ne = command.ne or (65536 if command.extended else 256)
        return self._respond(answer, ne)

    def _respond(self, data: bytes, ne: int) -> bytes:
        if len(data) <= ne:
            self.session.pending_response = b""
            return data + b"\x90\x00"
        rest = data[ne:]
        self.session.pending_response = rest
        return data[:ne] + bytes([0x61, min(len(rest), 256) % 256])

    def _dispatch(self, ins: int, p1: int, p2: int, data: bytes) -> bytes:
        if ins == INS.SELECT:
            return self._select(p1, data)
        handlers = {
            INS.GET_DATA: self._get_data,
            INS.PUT_DATA: self._put_data,
            INS.GENERATE_ASYMMETRIC: self._generate,
            INS.GENERAL_AUTHENTICATE: self._general_authenticate,
            INS.VERIFY: self._verify,
            INS.CHANGE_REFERENCE: self._change_reference,
            INS.RESET_RETRY: self._reset_retry,
            INS.GET_VERSION: lambda p1, p2, data: bytes(VERSION),
            INS.GET_SERIAL: lambda p1, p2, data: self.serial.to_bytes(4, "big"),
            INS.SET_MANAGEMENT_KEY: self._set_management_key,
            INS.RESET: self._reset_application,
        }
        handler = handlers.get(ins)  # type: ignore[call-overload]
        if handler is None:
            raise _Refusal(SW.INS_NOT_SUPPORTED)
        result: bytes = handler(p1, p2, data)
        return result

    # --- SELECT, GET DATA, PUT DATA -----------------------------------------------------------

    def _select(self, p1: int, data: bytes) -> bytes:
        if p1 != 0x04 or len(data) < 5 or not PIV_AID.startswith(data):
            raise _Refusal(SW.FILE_NOT_FOUND)
        self.session = _Session()
        algorithms = b"".join(
            tlv.encode(0x80, bytes([a]))
            for a in (0x03, 0x08, 0x0A, 0x0C, Algorithm.ECCP256, Algorithm.ECCP384)
        )
        return tlv.encode(
            TAG_APT,
            tlv.encode(0x4F, PIV_PIX)
            + tlv.encode(0x79, tlv.encode(0x4F, PIV_AID[:5]))
            + tlv.encode(0x50, b"OneCard virtual PIV")
            + tlv.encode(0xAC, algorithms + tlv.encode(0x06, b"\x00")),
        )

    @staticmethod
    def _discovery() -> bytes:
        # PIN usage policy 40 00: the PIV application PIN only.
        return tlv.encode(
            TAG_DISCOVERY, tlv.encode(0x4F, PIV_AID) + tlv.encode(0x5F2F, b"\x40\x00")
        )

    def _get_data(self, p1: int, p2: int, data: bytes) -> bytes:
        if (p1, p2) != (0x3F, 0xFF):
            raise _Refusal(SW.INCORRECT_P1P2)
        object_id = int.from_bytes(tlv.unpack(TAG_OBJECT_ID, data), "big")
        if object_id == ObjectId.DISCOVERY:
            return self._discovery()
        if object_id in PIN_PROTECTED_OBJECTS and not self.session.pin_verified:
            raise _Refusal(SW.SECURITY_CONDITION_NOT_SATISFIED)
        contents = self.state["objects"].get(f"{object_id:x}")
        if contents is None:
            raise _Refusal(SW.FILE_NOT_FOUND)
        return tlv.encode(TAG_OBJECT_DATA, bytes.fromhex(contents))

    def _put_data(self, p1: int, p2: int, data: bytes) -> bytes:
        if (p1, p2) != (0x3F, 0xFF):
            raise _Refusal(SW.INCORRECT_P1P2)
        self._require_management()
        objects = tlv.parse_list(data)
        if (
            len(objects) != 2
            or objects[0].tag != TAG_OBJECT_ID
            or objects[1].tag != TAG_OBJECT_DATA
        ):
            raise _Refusal(SW.INCORRECT_PARAMETERS)
        object_id = int.from_bytes(objects[0].value, "big")
        if object_id == ObjectId.DISCOVERY or not 1 <= len(objects[0].value) <= 3:
            raise _Refusal(SW.INCORRECT_PARAMETERS)
        if len(objects[1].value) > MAX_OBJECT_SIZE:
            raise _Refusal(SW.NOT_ENOUGH_SPACE)
        if objects[1].value:
            self.state["objects"][f"{object_id:x}"] = objects[1].value.hex()
        else:
            self.state["objects"].pop(f"{object_id:x}", None)
        self._save()
        return b""

    # --- keys -----------------------------------------------------------------------------

    def _require_management(self) -> None:
        if not self.session.management:
            raise _Refusal(SW.SECURITY_CONDITION_NOT_SATISFIED)

    def _private_key(self, slot: int) -> tuple[Algorithm, ec.EllipticCurvePrivateKey]:
        entry = self.state["keys"].get(f"{slot:x}")
        if entry is None:
            raise _Refusal(SW.REFERENCE_DATA_NOT_FOUND)
        algorithm = Algorithm(entry["algorithm"])
        key = ec.derive_private_key(int(entry["private"], 16), algorithm.curve)
        return algorithm, key

    def _generate(self, p1: int, p2: int, data: bytes) -> bytes:
        if p1 != 0x00 or p2 not in ASYMMETRIC_SLOTS:
            raise _Refusal(SW.INCORRECT_P1P2)
        self._require_management()
        template = tlv.parse_dict(tlv.unpack(TAG_GEN_TEMPLATE, data))
        raw_algorithm = template.get(TAG_GEN_ALGORITHM, b"")
        if len(raw_algorithm) != 1 or raw_algorithm[0] not in (
            Algorithm.ECCP256,
            Algorithm.ECCP384,
        ):
            raise _Refusal(SW.INCORRECT_PARAMETERS)
        algorithm = Algorithm(raw_algorithm[0])
        key = ec.generate_private_key(algorithm.curve)
        self.state["keys"][f"{p2:x}"] = {
            "algorithm": int(algorithm),
            "private": format(key.private_numbers().private_value, "x"),
        }
        self._save()
        return tlv.encode(
            TAG_PUBLIC_KEY, tlv.encode(TAG_EC_POINT, encode_ec_point(key.public_key()))
        )

    def _general_authenticate(self, p1: int, p2: int, data: bytes) -> bytes:
        template = tlv.parse_dict(tlv.unpack(TAG_DYN_AUTH, data))
        if p2 == Slot.MANAGEMENT:
            return self._management_authenticate(p1, template)
        if p2 not in ASYMMETRIC_SLOTS:
            raise _Refusal(SW.INCORRECT_P1P2)
        algorithm, key = self._private_key(p2)
        if p1 != algorithm:
            raise _Refusal(SW.INCORRECT_PARAMETERS)
        session = self.session
        if p2 in (Slot.AUTHENTICATION, Slot.KEY_MANAGEMENT) and not session.pin_verified:
            raise _Refusal(SW.SECURITY_CONDITION_NOT_SATISFIED)
        if p2 == Slot.SIGNATURE:
            if not (session.pin_verified and session.pin_always):
                raise _Refusal(SW.SECURITY_CONDITION_NOT_SATISFIED)
            session.pin_always = False
        if template.get(TAG_AUTH_RESPONSE) != b"":
            raise _Refusal(SW.INCORRECT_PARAMETERS)
        if TAG_AUTH_CHALLENGE in template:
            size = algorithm.field_size
            digest = template[TAG_AUTH_CHALLENGE][:size].rjust(size, b"\x00")
            signature = key.sign(digest, ec.ECDSA(Prehashed(_HASHES[algorithm])))
            return tlv.encode(TAG_DYN_AUTH, tlv.encode(TAG_AUTH_RESPONSE, signature))
        if TAG_AUTH_EXPONENTIATION in template:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(
                algorithm.curve, template[TAG_AUTH_EXPONENTIATION]
            )
            secret = key.exchange(ec.ECDH(), peer)
            return tlv.encode(TAG_DYN_AUTH, tlv.encode(TAG_AUTH_RESPONSE, secret))
        raise _Refusal(SW.INCORRECT_PARAMETERS)

    def _management_key(self) -> tuple[ManagementKeyType, bytes]:
        entry = self.state["management"]
        return ManagementKeyType(entry["type"]), bytes.fromhex(entry["key"])

    def _management_authenticate(self, p1: int, template: dict[int, bytes]) -> bytes:
        key_type, key = self._management_key()
        if p1 != key_type:
            raise _Refusal(SW.INCORRECT_PARAMETERS)
        session = self.session
        pending, session.auth_pending = session.auth_pending, None
        witness = template.get(TAG_AUTH_WITNESS)
        challenge = template.get(TAG_AUTH_CHALLENGE)
        response = template.get(TAG_AUTH_RESPONSE)
        if witness == b"" and challenge is None:  # mutual, step 1
            plain = secrets.token_bytes(key_type.block_size)
            session.auth_pending = ("mutual", plain)
            return tlv.encode(
                TAG_DYN_AUTH, tlv.encode(TAG_AUTH_WITNESS, encrypt_block(key_type, key, plain))
            )
        if witness and challenge is not None:  # mutual, step 2
            if (
                pending is None
                or pending[0] != "mutual"
                or not secrets.compare_digest(witness, pending[1])
            ):
                session.management = False
                raise _Refusal(SW.SECURITY_CONDITION_NOT_SATISFIED)
            if len(challenge) != key_type.block_size:
                raise _Refusal(SW.INCORRECT_PARAMETERS)
            session.management = True
            return tlv.encode(
                TAG_DYN_AUTH, tlv.encode(TAG_AUTH_RESPONSE, encrypt_block(key_type, key, challenge))
            )
        if challenge == b"" and witness is None:  # external, step 1
            plain = secrets.token_bytes(key_type.block_size)
            session.auth_pending = ("external", plain)
            return tlv.encode(TAG_DYN_AUTH, tlv.encode(TAG_AUTH_CHALLENGE, plain))
        if response and witness is None and challenge is None:  # external, step 2
            if (
                pending is None
                or pending[0] != "external"
                or not secrets.compare_digest(decrypt_block(key_type, key, response), pending[1])
            ):
                session.management = False
                raise _Refusal(SW.SECURITY_CONDITION_NOT_SATISFIED)
            session.management = True
            return b""
        raise _Refusal(SW.INCORRECT_PARAMETERS)

    def _set_management_key(self, p1: int, p2: int, data: bytes) -> bytes:
        if p1 != 0xFF or p2 not in (0xFF, 0xFE):
            raise _Refusal(SW.INCORRECT_P1P2)
        self._require_management()
        if len(data) < 3:
            raise _Refusal(SW.INCORRECT_PARAMETERS)
        try:
            key_type = ManagementKeyType(data[0])
        except ValueError:
            raise _Refusal(SW.INCORRECT_PARAMETERS) from None
        key = tlv.unpack(Slot.MANAGEMENT, data[1:])
        if len(key) != key_type.key_length:
            raise _Refusal(SW.INCORRECT_PARAMETERS)
        self.state["management"] = {"type": int(key_type), "key": key.hex()}
        self._save()
        return b""

    # --- PIN and PUK ------------------------------------------------------------------------

    def _check(self, name: str, given: bytes) -> None:
        """Compare `given` with the stored PIN or PUK, counting down; refuse when wrong."""
        tries_key = f"{name}_tries"
        if self.state[tries_key] <= 0:
            raise _Refusal(SW.AUTH_METHOD_BLOCKED)
        if not secrets.compare_digest(given, bytes.fromhex(self.state[name])):
            self.state[tries_key] -= 1
            self._save()
            if name == "pin":
                self.session.pin_verified = False
            if self.state[tries_key] == 0:
                raise _Refusal(SW.AUTH_METHOD_BLOCKED)
            raise _Refusal(0x63C0 | self.state[tries_key])
        if self.state[tries_key] != MAX_TRIES:
            self.state[tries_key] = MAX_TRIES
            self._save()

    @staticmethod
    def _valid_new_reference(value: bytes, minimum: int) -> bool:
        text = value.rstrip(b"\xff")
        return len(text) >= minimum and b"\xff" not in text

    def _verify(self, p1: int, p2: int, data: bytes) -> bytes:
        if p2 != KeyRef.PIN or p1 not in (0x00, 0xFF):
            raise _Refusal(SW.REFERENCE_DATA_NOT_FOUND)
        session = self.session
        if p1 == 0xFF:
            if data:
                raise _Refusal(SW.INCORRECT_PARAMETERS)
            session.pin_verified = session.pin_always = False
            return b""
        if not data:
            if session.pin_verified:
                return b""
            tries = self.state["pin_tries"]
            raise _Refusal(SW.AUTH_METHOD_BLOCKED if tries == 0 else 0x63C0 | tries)
        if len(data) != 8:
            raise _Refusal(SW.INCORRECT_PARAMETERS)
        self._check("pin", data)
        session.pin_verified = session.pin_always = True
        return b""

    def _change_reference(self, p1: int, p2: int, data: bytes) -> bytes:
        if p1 != 0x00 or p2 not in (KeyRef.PIN, KeyRef.PUK):
            raise _Refusal(SW.REFERENCE_DATA_NOT_FOUND)
        if len(data) != 16:
            raise _Refusal(SW.INCORRECT_PARAMETERS)
        name = "pin" if p2 == KeyRef.PIN else "puk"
        self._check(name, data[:8])
        if not self._valid_new_reference(data[8:], 6):
            raise _Refusal(SW.INCORRECT_PARAMETERS)
        self.state[name] = data[8:].hex()
        self._save()
        return b""

    def _reset_retry(self, p1: int, p2: int, data: bytes) -> bytes:
        if p1 != 0x00 or p2 != KeyRef.PIN:
            raise _Refusal(SW.REFERENCE_DATA_NOT_FOUND)
        if len(data) != 16:
            raise _Refusal(SW.INCORRECT_PARAMETERS)
        self._check("puk", data[:8])
        if not self._valid_new_reference(data[8:], 6):
            raise _Refusal(SW.INCORRECT_PARAMETERS)
        self.state["pin"] = data[8:].hex()
        self.state["pin_tries"] = MAX_TRIES
        self._save()
        return b""

    def _reset_application(self, p1: int, p2: int, data: bytes) -> bytes:
        if self.state["pin_tries"] > 0 or self.state["puk_tries"] > 0:
            raise _Refusal(SW.CONDITIONS_NOT_SATISFIED)
        serial = self.state["serial"]
        self.state = _fresh_state()
        self.state["serial"] = serial
        self._save()
        self.session = _Session()
        return b""


__all__ = ["ATR", "VirtualPivCard"]
