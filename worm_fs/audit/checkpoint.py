"""Signed tree heads as C2SP ``tlog-checkpoint`` signed notes, with Ed25519 keys.

A *signed note* (c2sp.org/signed-note, the format of ``golang.org/x/mod/sumdb/note``) is
UTF-8 text ending in a newline, a blank line, then one or more signature lines::

    — <key name> <base64(4-byte key hash || signature)>

The dash is U+2014 EM DASH followed by one space. The signature covers the text bytes
including its final newline, not the blank line. A key is named; its 4-byte *key hash*
is ``SHA-256(name || "\\n" || 0x01 || 32-byte Ed25519 public key)[:4]`` and a verifier
key is written ``<name>+<8 hex digits of key hash>+<base64(0x01 || public key)>``.

A *checkpoint* (c2sp.org/tlog-checkpoint) is a note whose text is the origin line, the
tree size in decimal, the base64 root hash, and optional non-empty extension lines.

A *cosignature* (c2sp.org/tlog-cosignature, ``cosignature/v1``) is a witness's signature
line on a checkpoint: key type byte 0x04 (so its key hash is
``SHA-256(name || "\\n" || 0x04 || public key)[:4]``), and the line's base64 holds
``key hash || 8-byte big-endian timestamp (Unix seconds) || Ed25519 signature`` of
``"cosignature/v1\\ntime <timestamp>\\n" + checkpoint body``. A cosigned checkpoint is
the log's note with the witnesses' lines appended to its signature block.

All signing and verification is done by the ``cryptography`` package.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

__all__ = [
    "ALG_COSIGNATURE",
    "ALG_ED25519",
    "MAX_SIGNATURES",
    "Checkpoint",
    "CheckpointError",
    "SigningKey",
    "VerifierKey",
    "add_signatures",
    "cosign",
    "note_signatures",
    "parse_signature_lines",
    "open_checkpoint",
    "open_note",
    "sign_checkpoint",
    "sign_note",
    "verify_cosignature",
]

ALG_ED25519 = 0x01
"""Signature type byte of Ed25519 in the signed-note format."""

ALG_COSIGNATURE = 0x04
"""Signature type byte of a ``cosignature/v1`` witness key (c2sp.org/tlog-cosignature)."""

COSIGNATURE_HEADER = "cosignature/v1\ntime {}\n"

MAX_SIGNATURES = 100
"""A note with more signature lines than this is rejected as malformed."""

_SIG_PREFIX = "\u2014 "  # EM DASH, SPACE
_KEY_FILE_MAX_BYTES = 4096
_ROOT_SIZE = 32
_MAX_TREE_SIZE = 2**64 - 1
_HEX8 = re.compile(r"[0-9a-fA-F]{8}")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


class CheckpointError(ValueError):
    """A signed note or checkpoint could not be accepted.

    The message starts with one of these fixed phrases, naming the reason:

    * ``"malformed note"`` — not a syntactically valid signed note;
    * ``"no signature"`` — no signature line carries the verifier's name and key hash;
    * ``"bad signature"`` — a signature line of the verifier's key does not verify;
    * ``"malformed checkpoint body"`` — the signed text is not a valid checkpoint.
    """


def _check_name(name: object) -> str:
    """Return ``name`` if it is a valid key name, else raise :class:`ValueError`."""
    if not isinstance(name, str):
        raise ValueError(f"key name must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError("key name is empty")
    for ch in name:
        if ch == "+":
            raise ValueError(f"key name {name!r} contains '+'")
        if ch.isspace() or ord(ch) < 0x20:
            raise ValueError(f"key name {name!r} contains a space or control character")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"key name {name!r} is not valid UTF-8") from None
    return name


def _b64decode(text: str, what: str) -> bytes:
    """Decode canonical standard base64 (padded, no stray characters or bits)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise ValueError(f"{what} is not canonical base64")
    return raw


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _key_hash(name: str, public_key: bytes, alg: int = ALG_ED25519) -> bytes:
    h = hashlib.sha256(name.encode("utf-8"))
    h.update(b"\n")
    h.update(bytes([alg]))
    h.update(public_key)
    return h.digest()[:4]


def _has_forbidden_chars(text: str) -> bool:
    """True if ``text`` has an ASCII control character other than newline."""
    return any(ord(ch) < 0x20 and ch != "\n" for ch in text)


class SigningKey:
    """An Ed25519 private key with its signed-note key name.

    Key file format (written by :meth:`save`, read by :meth:`load`), UTF-8 text::

        <key name>\\n
        <standard base64 of the 32-byte raw Ed25519 private key (the RFC 8032 seed)>\\n

    The file holds the secret: :meth:`save` creates it with mode 0600 and never
    overwrites an existing file.
    """

    __slots__ = ("_key_hash", "_name", "_private", "_public")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        """Wrap ``private_key`` under ``name``; :class:`ValueError` if the name is invalid."""
        if not isinstance(private_key, Ed25519PrivateKey):
            raise TypeError("private_key must be an Ed25519PrivateKey")
        self._name = _check_name(name)
        self._private = private_key
        self._public = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._key_hash = _key_hash(self._name, self._public)

    @classmethod
    def generate(cls, name: str) -> SigningKey:
        """Create a new random key named ``name``."""
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, name: str, raw: bytes) -> SigningKey:
        """Build a key from its 32-byte raw private key (seed); :class:`ValueError` if bad."""
        if not isinstance(raw, (bytes, bytearray, memoryview)) or len(raw) != 32:
            raise ValueError("an Ed25519 private key must be 32 raw bytes")
        return cls(name, Ed25519PrivateKey.from_private_bytes(bytes(raw)))

    @property
    def name(self) -> str:
        """The key name used in signature lines."""
        return self._name

    def public_bytes(self) -> bytes:
        """The 32-byte raw Ed25519 public key."""
        return self._public

    def key_hash(self) -> bytes:
        """The 4-byte key hash: SHA-256(name || "\\n" || 0x01 || public key)[:4]."""
        return self._key_hash

    def verifier_key(self) -> str:
        """The public verifier key text: ``<name>+<hash hex>+<base64(0x01 || pubkey)>``."""
        return str(self.verifier())

    def verifier(self) -> VerifierKey:
        """The matching :class:`VerifierKey`."""
        return VerifierKey(self._name, self._public)

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``message``."""
        return self._private.sign(message)

    def _private_bytes(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key file at ``path`` with mode 0600.

        The file is created with ``O_CREAT | O_EXCL`` and mode 0600 (then ``fchmod`` to
        0600 whatever the umask), written and fsynced. Raises :class:`FileExistsError`
        if ``path`` exists (a key is never overwritten). On a write error the partial
        file is removed.
        """
        content = f"{self._name}\n{_b64encode(self._private_bytes())}\n".encode()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o600)
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, 0o600)
            view = memoryview(content)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        os.close(fd)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SigningKey:
        """Read a key file written by :meth:`save`.

        Raises :class:`ValueError` naming the problem if the file is not exactly a
        valid name line and a base64 32-byte key line (the final newline is optional);
        :class:`OSError` if it cannot be read.
        """
        with open(path, "rb") as f:
            data = f.read(_KEY_FILE_MAX_BYTES + 1)
        where = f"key file {os.fspath(path)!r}"
        if len(data) > _KEY_FILE_MAX_BYTES:
            raise ValueError(f"{where} is too large to be a key file")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{where} is not UTF-8 text") from None
        if text.endswith("\n"):
            text = text[:-1]
        lines = text.split("\n")
        if len(lines) != 2:
            raise ValueError(
                f"{where} must have exactly 2 lines (name, base64 key), found {len(lines)}"
            )
        name_line, key_line = lines
        try:
            name = _check_name(name_line)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        try:
            raw = _b64decode(key_line, "private key")
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if len(raw) != 32:
            raise ValueError(f"{where}: private key is {len(raw)} bytes, expected 32")
        return cls.from_private_bytes(name, raw)

    def __repr__(self) -> str:
        return f"SigningKey(name={self._name!r}, key_hash={self._key_hash.hex()})"


class VerifierKey:
    """An Ed25519 public key with its signed-note key name, able to check signatures."""

    __slots__ = ("_alg", "_key_hash", "_name", "_public", "_public_key")

    def __init__(self, name: str, public_key: bytes, alg: int = ALG_ED25519) -> None:
        """Build from a key name and a 32-byte raw Ed25519 public key; ``alg`` is the
        signature type: :data:`ALG_ED25519` (a log's key) or :data:`ALG_COSIGNATURE`
        (a witness's ``cosignature/v1`` key)."""
        if alg not in (ALG_ED25519, ALG_COSIGNATURE):
            raise ValueError(f"signature type 0x{alg:02x} is not supported")
        self._alg = alg
        self._name = _check_name(name)
        if not isinstance(public_key, (bytes, bytearray, memoryview)) or len(public_key) != 32:
            raise ValueError("an Ed25519 public key must be 32 raw bytes")
        self._public = bytes(public_key)
        try:
            self._public_key = Ed25519PublicKey.from_public_bytes(self._public)
        except ValueError as e:
            raise ValueError(f"invalid Ed25519 public key: {e}") from None
        self._key_hash = _key_hash(self._name, self._public, alg)

    @classmethod
    def parse(cls, text: str, algorithms: tuple[int, ...] = (ALG_ED25519,)) -> VerifierKey:
        """Parse ``<name>+<8 hex digits>+<base64(type byte || 32-byte public key)>``.

        ``algorithms`` are the type bytes accepted: by default only 0x01 (a log's
        Ed25519 key); a witness key is parsed with ``(ALG_COSIGNATURE,)``.
        Surrounding whitespace is ignored. Raises :class:`ValueError` with a specific
        message for: wrong shape, invalid name, bad hex or base64, a type byte not in
        ``algorithms``, a key that is not 32 bytes, or a key hash that does not match
        the name and key.
        """
        if not isinstance(text, str):
            raise ValueError(f"verifier key must be a str, not {type(text).__name__}")
        parts = text.strip().split("+", 2)  # base64 may itself contain '+'
        if len(parts) != 3:
            raise ValueError("verifier key must look like <name>+<hash>+<key>")
        name, hash_hex, key_b64 = parts
        try:
            _check_name(name)
        except ValueError as e:
            raise ValueError(f"verifier key: {e}") from None
        if not _HEX8.fullmatch(hash_hex):
            raise ValueError(f"verifier key hash {hash_hex!r} is not 8 hex digits")
        try:
            key = _b64decode(key_b64, "verifier key data")
        except ValueError as e:
            raise ValueError(f"verifier key: {e}") from None
        if not key:
            raise ValueError("verifier key data is empty")
        if key[0] not in algorithms:
            wanted = ", ".join(f"0x{a:02x}" for a in algorithms)
            raise ValueError(
                f"verifier key algorithm 0x{key[0]:02x} is not supported (only {wanted})"
            )
        if len(key) != 33:
            raise ValueError(f"verifier key is {len(key) - 1} bytes, expected 32 (Ed25519)")
        verifier = cls(name, key[1:], key[0])
        if verifier.key_hash != bytes.fromhex(hash_hex):
            raise ValueError(
                f"verifier key hash {hash_hex} does not match name {name!r} and key "
                f"(expected {verifier.key_hash.hex()})"
            )
        return verifier

    @property
    def name(self) -> str:
        """The key name that signature lines carry."""
        return self._name

    @property
    def key_hash(self) -> bytes:
        """The 4-byte key hash that signatures start with."""
        return self._key_hash

    @property
    def alg(self) -> int:
        """The signature type byte (0x01 a log's key, 0x04 a witness's cosignature key)."""
        return self._alg

    def public_bytes(self) -> bytes:
        """The 32-byte raw Ed25519 public key."""
        return self._public

    def verify(self, message: bytes, sig: bytes) -> bool:
        """Return whether ``sig`` is a valid Ed25519 signature of ``message`` by this key."""
        if not isinstance(sig, (bytes, bytearray, memoryview)) or len(sig) != 64:
            return False
        try:
            self._public_key.verify(bytes(sig), message)
        except InvalidSignature:
            return False
        return True

    def __str__(self) -> str:
        """The verifier key text, as :meth:`parse` reads it."""
        key_data = _b64encode(bytes([self._alg]) + self._public)
        return f"{self._name}+{self._key_hash.hex()}+{key_data}"

    def __repr__(self) -> str:
        return f"VerifierKey.parse({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VerifierKey):
            return NotImplemented
        return (self._name, self._public, self._alg) == (other._name, other._public, other._alg)

    def __hash__(self) -> int:
        return hash((self._name, self._public, self._alg))


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: origin, tree size and root hash, plus opaque extension lines.

    Construction validates the fields and raises :class:`ValueError`: ``origin``
    non-empty, no newline or control character; ``0 <= size < 2**64``; ``root`` 32
    bytes; each extension line non-empty, no newline or control character.
    """

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not self.origin:
            raise ValueError("checkpoint origin must be a non-empty str")
        if "\n" in self.origin or _has_forbidden_chars(self.origin):
            raise ValueError("checkpoint origin contains a newline or control character")
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise ValueError("checkpoint size must be an int")
        if not 0 <= self.size <= _MAX_TREE_SIZE:
            raise ValueError(f"checkpoint size {self.size} is outside [0, 2**64)")
        if not isinstance(self.root, (bytes, bytearray, memoryview)):
            raise ValueError("checkpoint root must be bytes")
        if len(self.root) != _ROOT_SIZE:
            raise ValueError(f"checkpoint root is {len(self.root)} bytes, expected 32")
        object.__setattr__(self, "root", bytes(self.root))
        if isinstance(self.extensions, str):
            raise ValueError("checkpoint extensions must be a sequence of lines, not a str")
        extensions = tuple(self.extensions)
        for line in extensions:
            if not isinstance(line, str) or not line:
                raise ValueError("checkpoint extension lines must be non-empty str")
            if "\n" in line or _has_forbidden_chars(line):
                raise ValueError("checkpoint extension line contains a newline or control char")
        object.__setattr__(self, "extensions", extensions)

    def body(self) -> str:
        """The note text: ``f"{origin}\\n{size}\\n{base64(root)}\\n"`` then extension lines."""
        text = f"{self.origin}\n{self.size}\n{_b64encode(self.root)}\n"
        return text + "".join(f"{line}\n" for line in self.extensions)

    @classmethod
    def parse_body(cls, text: str) -> Checkpoint:
        """Parse a checkpoint note text strictly; the inverse of :meth:`body`.

        Requires: newline-terminated; at least 3 lines; a non-empty origin; a decimal
        size with no sign, spaces or leading zeros (``"0"`` alone is allowed) below
        2**64; a root that is canonical base64 of exactly 32 bytes; non-empty extension
        lines; no control characters. Raises :class:`CheckpointError` whose message
        starts with ``"malformed checkpoint body"``.
        """

        def bad(why: str) -> CheckpointError:
            return CheckpointError(f"malformed checkpoint body: {why}")

        if not isinstance(text, str):
            raise bad(f"expected str, not {type(text).__name__}")
        if not text.endswith("\n"):
            raise bad("does not end with a newline")
        if _has_forbidden_chars(text):
            raise bad("contains a control character")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise bad(f"has {len(lines)} lines, expected at least 3")
        origin, size_text, root_text, *extensions = lines
        if not origin:
            raise bad("origin line is empty")
        if not _DECIMAL.fullmatch(size_text):
            raise bad(f"tree size {size_text!r} is not a decimal without leading zeros")
        size = int(size_text)
        if size > _MAX_TREE_SIZE:
            raise bad(f"tree size {size_text} does not fit in 64 bits")
        try:
            root = _b64decode(root_text, "root hash")
        except ValueError as e:
            raise bad(str(e)) from None
        if len(root) != _ROOT_SIZE:
            raise bad(f"root hash is {len(root)} bytes, expected 32")
        if any(not line for line in extensions):
            raise bad("an extension line is empty")
        return cls(origin=origin, size=size, root=root, extensions=tuple(extensions))


def sign_note(text: str, key: SigningKey) -> str:
    """Return the signed note: ``text``, a blank line, and one signature line by ``key``.

    ``text`` must be non-empty, end with a newline, and contain no control character
    other than newline (:class:`ValueError` otherwise). The signature line is
    ``"— <name> <base64(key hash || Ed25519 signature of the text's UTF-8 bytes)>\\n"``.
    """
    if not isinstance(text, str) or not text.endswith("\n"):
        raise ValueError("note text must be a str ending with a newline")
    if _has_forbidden_chars(text):
        raise ValueError("note text contains a control character other than newline")
    try:
        message = text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("note text is not valid UTF-8") from None
    sig = key.sign(message)
    return f"{text}\n{_SIG_PREFIX}{key.name} {_b64encode(key.key_hash() + sig)}\n"


def note_signatures(note: str | bytes) -> tuple[str, list[tuple[str, bytes]]]:
    """Parse a signed note into its text (with final newline) and its signature lines,
    each as (key name, decoded base64: key hash || signature data), without checking any.

    The note must be valid UTF-8, with no control characters but newline, the text
    separated from the signatures by the *last* blank line, and at most
    :data:`MAX_SIGNATURES` well-formed signature lines; otherwise
    :class:`CheckpointError` starting with ``"malformed note"``.
    """
    if isinstance(note, (bytes, bytearray, memoryview)):
        try:
            note = bytes(note).decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError("malformed note: not valid UTF-8") from None
    if not isinstance(note, str):
        raise CheckpointError(f"malformed note: expected str or bytes, not {type(note).__name__}")
    try:
        note.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError("malformed note: not valid UTF-8") from None
    if _has_forbidden_chars(note):
        raise CheckpointError("malformed note: contains a control character")
    split = note.rfind("\n\n")
    if split < 0:
        raise CheckpointError("malformed note: no blank line before the signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block or not block.endswith("\n"):
        raise CheckpointError("malformed note: signature block missing or not newline-terminated")
    return text, parse_signature_lines(block)


def parse_signature_lines(block: str) -> list[tuple[str, bytes]]:
    """Parse newline-terminated signature lines (``— <name> <base64>``) into (name, raw)
    pairs; :class:`CheckpointError` starting with ``"malformed note"`` if one is not."""
    if not block.endswith("\n"):
        raise CheckpointError("malformed note: signature block not newline-terminated")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(f"malformed note: more than {MAX_SIGNATURES} signatures")
    parsed: list[tuple[str, bytes]] = []
    for number, line in enumerate(lines, 1):
        if not line.startswith(_SIG_PREFIX):
            raise CheckpointError(f"malformed note: signature line {number} lacks '\u2014 '")
        name, sep, sig_b64 = line[len(_SIG_PREFIX) :].partition(" ")
        try:
            if not sep:
                raise ValueError("no space between name and signature")
            _check_name(name)
            raw = _b64decode(sig_b64, "signature")
        except ValueError as e:
            raise CheckpointError(f"malformed note: signature line {number}: {e}") from None
        if len(raw) < 5:
            raise CheckpointError(f"malformed note: signature line {number} is too short")
        parsed.append((name, raw))
    return parsed


def open_note(note: str | bytes, verifier: VerifierKey) -> str:
    """Check ``note`` is signed by ``verifier`` and return its text (with final newline).

    The whole note is parsed first (:func:`note_signatures`). Lines from other keys (a
    different name or key hash) are ignored, as the format requires. Every line that
    carries the verifier's name and key hash must verify; at least one must exist.

    Raises :class:`CheckpointError` starting with ``"malformed note"``,
    ``"no signature"`` or ``"bad signature"``.
    """
    text, parsed = note_signatures(note)
    message = text.encode("utf-8")
    found = 0
    for name, raw in parsed:
        if name != verifier.name or raw[:4] != verifier.key_hash:
            continue
        found += 1
        if not verifier.verify(message, raw[4:]):
            raise CheckpointError(
                f"bad signature: the signature by {verifier.name}+{verifier.key_hash.hex()} "
                "does not verify"
            )
    if not found:
        raise CheckpointError(
            f"no signature by key {verifier.name}+{verifier.key_hash.hex()} in the note"
        )
    return text


def cosign(body: str, key: SigningKey, timestamp: int) -> str:
    """Return ``key``'s ``cosignature/v1`` signature line (newline-terminated) on the
    checkpoint ``body`` at ``timestamp`` (Unix seconds)."""
    witness = VerifierKey(key.name, key.public_bytes(), ALG_COSIGNATURE)
    message = (COSIGNATURE_HEADER.format(timestamp) + body).encode("utf-8")
    raw = witness.key_hash + timestamp.to_bytes(8, "big") + key.sign(message)
    return f"{_SIG_PREFIX}{key.name} {_b64encode(raw)}\n"


def verify_cosignature(note: str | bytes, witness: VerifierKey) -> int | None:
    """The timestamp of ``witness``'s valid cosignature on the checkpoint ``note``, or
    None if the note has no line of that key.

    Raises :class:`CheckpointError` starting with ``"malformed note"``, or with
    ``"bad signature"`` if a line of the witness's name and key hash does not verify.
    """
    if witness.alg != ALG_COSIGNATURE:
        raise ValueError("not a cosignature/v1 (type 0x04) witness key")
    text, parsed = note_signatures(note)
    newest = None
    for name, raw in parsed:
        if name != witness.name or raw[:4] != witness.key_hash:
            continue
        if len(raw) != 4 + 8 + 64:
            raise CheckpointError(f"bad signature: the cosignature by {witness.name} is "
                                  f"{len(raw)} bytes, expected 76")
        timestamp = int.from_bytes(raw[4:12], "big")
        message = (COSIGNATURE_HEADER.format(timestamp) + text).encode("utf-8")
        if not witness.verify(message, raw[12:]):
            raise CheckpointError(f"bad signature: the cosignature by {witness.name}+"
                                  f"{witness.key_hash.hex()} does not verify")
        newest = timestamp if newest is None else max(newest, timestamp)
    return newest


def add_signatures(note: str, lines: str) -> str:
    """``note`` with the signature ``lines`` appended (lines it has already, and any
    earlier line of the same key, replaced); :class:`CheckpointError` if malformed."""
    text, kept = note_signatures(note)
    added = parse_signature_lines(lines)
    new_keys = {(name, raw[:4]) for name, raw in added}
    merged = [(n, r) for n, r in kept if (n, r[:4]) not in new_keys] + added
    return text + "\n" + "".join(f"{_SIG_PREFIX}{n} {_b64encode(r)}\n" for n, r in merged)


def sign_checkpoint(cp: Checkpoint, key: SigningKey) -> str:
    """Return ``cp`` as a signed note: its :meth:`Checkpoint.body`, a blank line, and
    ``"— <key name> <base64(key hash || Ed25519 signature of the body)>\\n"``.
    """
    return sign_note(cp.body(), key)


def open_checkpoint(note_text: str | bytes, verifier: VerifierKey) -> Checkpoint:
    """Verify a signed checkpoint note against ``verifier`` and return the checkpoint.

    The signature is checked before the body is interpreted (see :func:`open_note`),
    then the body is parsed by :meth:`Checkpoint.parse_body`. Raises
    :class:`CheckpointError` whose message starts with ``"malformed note"``,
    ``"no signature"``, ``"bad signature"`` or ``"malformed checkpoint body"``.
    The caller should still check ``origin`` (and that ``size`` only grows).
    """
    return Checkpoint.parse_body(open_note(note_text, verifier))
