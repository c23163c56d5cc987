"""Tests for worm_fs.audit.checkpoint (C2SP signed notes and tlog checkpoints).

Interoperability vectors come from the Go reference implementation,
golang.org/x/mod/sumdb/note (note_test.go: the PeterNeumann and EnochRoot keys and
signatures), and from the example body in the C2SP tlog-checkpoint specification.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat

import pytest

from worm_fs.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    SigningKey,
    VerifierKey,
    open_checkpoint,
    open_note,
    sign_checkpoint,
    sign_note,
)
from worm_fs.audit.merkle import EMPTY_ROOT, leaf_hash

EM_DASH = "\u2014"

# --- golang.org/x/mod/sumdb/note reference vectors ------------------------------------

PETER_SKEY_DATA = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"  # 0x01 || seed
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    f"{EM_DASH} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSN"
    "XgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    f"{EM_DASH} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01"
    "oOTGwnWLox33WWd1RvMc+QQ=\n"
)

# Example checkpoint body from the C2SP tlog-checkpoint specification.
SPEC_BODY = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"


def peter_key() -> SigningKey:
    raw = base64.b64decode(PETER_SKEY_DATA)
    assert raw[0] == 0x01
    return SigningKey.from_private_bytes("PeterNeumann", raw[1:])


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate("worm-fs/3f2a9c")


@pytest.fixture(scope="module")
def other_key() -> SigningKey:
    return SigningKey.generate("worm-fs/other")


def sample_checkpoint(size: int = 42) -> Checkpoint:
    return Checkpoint(origin="worm-fs/3f2a9c", size=size, root=leaf_hash(b"root %d" % size))


# --- Interoperability with the Go reference --------------------------------------------


def test_go_signer_key_matches_go_verifier_key():
    k = peter_key()
    assert k.verifier_key() == PETER_VKEY
    assert k.key_hash() == bytes.fromhex("c74f20a3")
    assert str(k.verifier()) == PETER_VKEY
    assert k.verifier() == VerifierKey.parse(PETER_VKEY)


def test_go_sign_vector_is_reproduced_exactly():
    assert sign_note(GO_TEXT, peter_key()) == GO_TEXT + "\n" + PETER_SIG


def test_go_open_vectors():
    peter = VerifierKey.parse(PETER_VKEY)
    enoch = VerifierKey.parse(ENOCH_VKEY)
    both = GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG
    assert open_note(both, peter) == GO_TEXT
    assert open_note(both, enoch) == GO_TEXT
    assert open_note(both.encode(), peter) == GO_TEXT
    with pytest.raises(CheckpointError, match="^no signature"):
        open_note(GO_TEXT + "\n" + PETER_SIG, enoch)
    # Repeated valid signatures by the verifier's key are fine.
    assert open_note(GO_TEXT + "\n" + PETER_SIG + PETER_SIG + ENOCH_SIG, peter) == GO_TEXT


def test_go_invalid_signature_vector():
    peter = VerifierKey.parse(PETER_VKEY)
    tampered = PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(CheckpointError, match="^bad signature"):
        open_note(GO_TEXT + "\n" + tampered, peter)
    # A failing line by the verifier's key rejects the note even next to a good one.
    with pytest.raises(CheckpointError, match="^bad signature"):
        open_note(GO_TEXT + "\n" + PETER_SIG + tampered, peter)


@pytest.mark.parametrize(
    "note",
    [
        GO_TEXT,
        GO_TEXT + "\n",
        GO_TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + GO_TEXT + "\n" + PETER_SIG,
        GO_TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Bad Name")[:-1],
        GO_TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        GO_TEXT + "\n" + PETER_SIG.replace(EM_DASH, "--"),
        GO_TEXT + "\n" + PETER_SIG.replace(EM_DASH, "\u2013"),  # en dash
        GO_TEXT + "\n" + PETER_SIG.replace("PeterNeumann ", "PeterNeumann"),
        GO_TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Peter+Neumann"),
        GO_TEXT + "\n" + f"{EM_DASH} PeterNeumann AAAA\n",  # too short to hold a key hash
        GO_TEXT + "\n" + f"{EM_DASH} PeterNeumann x08go/ZJ!!\n",
        GO_TEXT.replace("\n", "\r\n") + "\n" + PETER_SIG,
        GO_TEXT + "\n" + PETER_SIG * 101,
    ],
)
def test_go_malformed_notes(note):
    with pytest.raises(CheckpointError, match="^malformed note"):
        open_note(note, VerifierKey.parse(PETER_VKEY))


def test_invalid_utf8_note_is_malformed():
    note = b"\xff" + (GO_TEXT + "\n" + PETER_SIG).encode()
    with pytest.raises(CheckpointError, match="^malformed note"):
        open_note(note, VerifierKey.parse(PETER_VKEY))


# --- Verifier keys --------------------------------------------------------------------


def test_verifier_key_fields():
    v = VerifierKey.parse(PETER_VKEY)
    assert v.name == "PeterNeumann"
    assert v.key_hash == bytes.fromhex("c74f20a3")
    assert v.public_bytes() == base64.b64decode(PETER_VKEY.split("+", 2)[2])[1:]
    assert len(v.public_bytes()) == 32
    assert VerifierKey.parse(" " + PETER_VKEY + "\n") == v


def test_verifier_key_manglings_are_rejected():
    # Every proper substring and every single-character change must fail (as in Go).
    b = PETER_VKEY
    for i in range(len(b) + 1):
        for j in range(i + 1, len(b) + 1):
            if (i, j) != (0, len(b)):
                with pytest.raises(ValueError):
                    VerifierKey.parse(b[i:j])
    for i in range(len(b)):
        changed = b[:i] + chr(ord(b[i]) + 1) + b[i + 1 :]
        with pytest.raises(ValueError):
            VerifierKey.parse(changed)


def test_verifier_key_with_wrong_hash_is_rejected(key):
    name, _, data = key.verifier_key().split("+", 2)
    wrong = (int.from_bytes(key.key_hash(), "big") ^ 1).to_bytes(4, "big").hex()
    with pytest.raises(ValueError, match="does not match"):
        VerifierKey.parse(f"{name}+{wrong}+{data}")


def test_verifier_key_go_bad_keys():
    # Wrong key length and unknown algorithm, each with a key hash adjusted to match.
    # (Go's wrong-length vector is also non-canonical base64, rejected for that first.)
    with pytest.raises(ValueError):
        VerifierKey.parse(
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
        )
    with pytest.raises(ValueError, match="algorithm"):
        VerifierKey.parse("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_verifier_key_wrong_length_with_matching_hash(length):
    data = b"\x01" + bytes(range(length))
    key_hash = hashlib.sha256(b"name\n" + data).digest()[:4].hex()
    with pytest.raises(ValueError, match="expected 32"):
        VerifierKey.parse(f"name+{key_hash}+{base64.b64encode(data).decode()}")


def test_verifier_key_hash_definition(key):
    want = hashlib.sha256(key.name.encode() + b"\n\x01" + key.public_bytes()).digest()[:4]
    assert key.key_hash() == want
    assert re.fullmatch(
        re.escape(key.name) + r"\+[0-9a-f]{8}\+[A-Za-z0-9+/]{44}", key.verifier_key()
    )
    assert VerifierKey.parse(key.verifier_key()).key_hash == want


def test_verifier_verify(key):
    v = key.verifier()
    sig = key.sign(b"hi")
    assert v.verify(b"hi", sig)
    assert not v.verify(b"ho", sig)
    assert not v.verify(b"hi", bytes([sig[0] ^ 1]) + sig[1:])
    assert not v.verify(b"hi", sig[:-1])
    assert not v.verify(b"hi", b"")


@pytest.mark.parametrize("name", ["", "a b", "a+b", "tab\there", "new\nline", "nbsp\u00a0x"])
def test_invalid_key_names_are_rejected(name):
    with pytest.raises(ValueError):
        SigningKey.generate(name)


# --- Checkpoint bodies ----------------------------------------------------------------


def test_body_shape():
    root = bytes(range(32))
    cp = Checkpoint("example.com/log", 7, root)
    assert cp.body() == f"example.com/log\n7\n{base64.b64encode(root).decode()}\n"
    assert Checkpoint("o", 0, EMPTY_ROOT).body().split("\n")[1] == "0"


def test_spec_example_body_round_trips():
    cp = Checkpoint.parse_body(SPEC_BODY)
    assert cp.origin == "example.com/behind-the-sofa"
    assert cp.size == 20852163
    assert cp.root == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert cp.extensions == ()
    assert cp.body() == SPEC_BODY


def test_extension_lines_round_trip():
    body = SPEC_BODY + "ext one\nsecond ext\n"
    cp = Checkpoint.parse_body(body)
    assert cp.extensions == ("ext one", "second ext")
    assert cp.body() == body


ROOT_B64 = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="


@pytest.mark.parametrize(
    "body",
    [
        "",
        "origin\n1\n",
        f"origin\n1\n{ROOT_B64}",  # no final newline
        f"\n1\n{ROOT_B64}\n",  # empty origin
        f"origin\n01\n{ROOT_B64}\n",
        f"origin\n00\n{ROOT_B64}\n",
        f"origin\n-1\n{ROOT_B64}\n",
        f"origin\n+1\n{ROOT_B64}\n",
        f"origin\n 1\n{ROOT_B64}\n",
        f"origin\n1 \n{ROOT_B64}\n",
        f"origin\n\n{ROOT_B64}\n",
        f"origin\n1e3\n{ROOT_B64}\n",
        f"origin\n\u0661\n{ROOT_B64}\n",  # ARABIC-INDIC DIGIT ONE
        f"origin\n{2**64}\n{ROOT_B64}\n",
        "origin\n1\nAAAA\n",  # 3-byte root
        f"origin\n1\n{base64.b64encode(bytes(33)).decode()}\n",
        f"origin\n1\n{ROOT_B64.rstrip('=')}\n",  # unpadded
        "origin\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2J=\n",  # non-canonical
        f"origin\n1\n{ROOT_B64}\n\n",  # empty extension line
        f"origin\n1\n{ROOT_B64}\r\n",
    ],
)
def test_malformed_bodies_are_rejected(body):
    with pytest.raises(CheckpointError, match="^malformed checkpoint body"):
        Checkpoint.parse_body(body)


def test_checkpoint_constructor_validates():
    root = bytes(32)
    Checkpoint("o", 2**64 - 1, root)
    for args in [
        ("", 1, root),
        ("a\nb", 1, root),
        ("o", -1, root),
        ("o", 2**64, root),
        ("o", True, root),
        ("o", 1, bytes(31)),
        ("o", 1, "x" * 32),
    ]:
        with pytest.raises(ValueError):
            Checkpoint(*args)
    with pytest.raises(ValueError):
        Checkpoint("o", 1, root, ("",))
    with pytest.raises(ValueError):
        Checkpoint("o", 1, root, "abc")  # type: ignore[arg-type]
    cp = Checkpoint("o", 1, bytearray(root), ["x"])  # type: ignore[arg-type]
    assert isinstance(cp.root, bytes)
    assert cp.extensions == ("x",)
    assert hash(cp) == hash(Checkpoint("o", 1, root, ("x",)))


# --- Signing and opening checkpoints ---------------------------------------------------


def test_sign_open_round_trip(key):
    cp = sample_checkpoint()
    note = sign_checkpoint(cp, key)
    assert open_checkpoint(note, key.verifier()) == cp
    assert open_checkpoint(note, VerifierKey.parse(key.verifier_key())) == cp
    assert open_checkpoint(note.encode(), key.verifier()) == cp


def test_signed_note_text_shape(key):
    cp = sample_checkpoint(1234)
    note = sign_checkpoint(cp, key)
    body, sig_block = note.split("\n\n")
    assert body + "\n" == cp.body()
    assert note.startswith(cp.body() + "\n" + EM_DASH + " ")
    assert note.endswith("\n")
    lines = note.split("\n")
    assert lines == [cp.origin, "1234", base64.b64encode(cp.root).decode(), "", lines[4], ""]
    match = re.fullmatch(r"\u2014 (\S+) ([A-Za-z0-9+/]+=*)", lines[4])
    assert match is not None
    assert match.group(1) == key.name
    raw = base64.b64decode(match.group(2))
    assert len(raw) == 4 + 64
    assert raw[:4] == key.key_hash()
    assert key.verifier().verify(cp.body().encode(), raw[4:])
    assert "\u2014 ".encode() == b"\xe2\x80\x94 "
    assert b"\n\n\xe2\x80\x94 " + key.name.encode() + b" " in note.encode()
    assert sig_block == lines[4] + "\n"


def test_tampered_size_fails(key):
    cp = sample_checkpoint(42)
    note = sign_checkpoint(cp, key)
    tampered = note.replace("\n42\n", "\n43\n", 1)
    assert tampered != note
    with pytest.raises(CheckpointError, match="^bad signature"):
        open_checkpoint(tampered, key.verifier())


def test_tampered_root_fails(key):
    cp = sample_checkpoint(42)
    note = sign_checkpoint(cp, key)
    other_root = base64.b64encode(leaf_hash(b"other")).decode()
    tampered = note.replace(base64.b64encode(cp.root).decode(), other_root, 1)
    assert tampered != note
    with pytest.raises(CheckpointError, match="^bad signature"):
        open_checkpoint(tampered, key.verifier())


def test_tampered_origin_and_added_extension_fail(key):
    note = sign_checkpoint(sample_checkpoint(), key)
    with pytest.raises(CheckpointError, match="^bad signature"):
        open_checkpoint(note.replace("worm-fs/3f2a9c\n", "worm-fs/3f2a9d\n", 1), key.verifier())
    body, sigs = note.split("\n\n")
    with pytest.raises(CheckpointError, match="^bad signature"):
        open_checkpoint(body + "\nextra\n\n" + sigs, key.verifier())


def test_signature_by_another_key_fails(key, other_key):
    note = sign_checkpoint(sample_checkpoint(), other_key)
    with pytest.raises(CheckpointError, match="^no signature"):
        open_checkpoint(note, key.verifier())


def test_signature_by_same_name_other_key_fails(key):
    impostor = SigningKey.generate(key.name)
    note = sign_checkpoint(sample_checkpoint(), impostor)
    with pytest.raises(CheckpointError, match="^(no signature|bad signature)"):
        open_checkpoint(note, key.verifier())


def test_forged_line_with_matching_name_and_hash_fails(key, other_key):
    cp = sample_checkpoint()
    forged_sig = other_key.sign(cp.body().encode())
    line = f"{EM_DASH} {key.name} {base64.b64encode(key.key_hash() + forged_sig).decode()}\n"
    with pytest.raises(CheckpointError, match="^bad signature"):
        open_checkpoint(cp.body() + "\n" + line, key.verifier())


def test_foreign_signatures_are_ignored(key, other_key):
    cp = sample_checkpoint()
    ours = sign_checkpoint(cp, key)
    theirs = sign_checkpoint(cp, other_key)
    cosigned = ours + theirs.split("\n\n", 1)[1]
    assert open_checkpoint(cosigned, key.verifier()) == cp
    assert open_checkpoint(cosigned, other_key.verifier()) == cp


def test_lines_sharing_only_name_or_only_key_hash_are_ignored(key):
    # The spec: ignore signatures from unknown keys even if they share a name or a key
    # ID with a known key (but not both). Such lines must not cause "bad signature".
    cp = sample_checkpoint()
    note = sign_checkpoint(cp, key)
    garbage = bytes(64)
    other_hash = bytes(b ^ 0xFF for b in key.key_hash())
    same_name = f"{EM_DASH} {key.name} {base64.b64encode(other_hash + garbage).decode()}\n"
    same_hash = f"{EM_DASH} someone.else {base64.b64encode(key.key_hash() + garbage).decode()}\n"
    assert open_checkpoint(note + same_name + same_hash, key.verifier()) == cp
    assert open_checkpoint(note.replace("\n\n", "\n\n" + same_hash, 1), key.verifier()) == cp
    with pytest.raises(CheckpointError, match="^no signature"):
        open_checkpoint(cp.body() + "\n" + same_name + same_hash, key.verifier())


def test_impostor_with_same_name_is_ignored_next_to_the_real_signature(key):
    impostor = SigningKey.generate(key.name)
    assert impostor.key_hash() != key.key_hash()
    cp = sample_checkpoint()
    note = sign_checkpoint(cp, key) + sign_checkpoint(cp, impostor).split("\n\n", 1)[1]
    assert open_checkpoint(note, key.verifier()) == cp


def test_note_text_may_contain_blank_lines(key):
    # The text is separated from the signatures by the *last* blank line.
    text = "first paragraph\n\nsecond paragraph\n"
    note = sign_note(text, key)
    assert open_note(note, key.verifier()) == text


def test_validly_signed_bad_body_is_reported_as_body_error(key):
    note = sign_note("origin\n007\n" + ROOT_B64 + "\n", key)
    with pytest.raises(CheckpointError, match="^malformed checkpoint body"):
        open_checkpoint(note, key.verifier())


def test_signature_is_checked_before_the_body(key, other_key):
    note = sign_note("not a checkpoint\n", other_key)
    with pytest.raises(CheckpointError, match="^no signature"):
        open_checkpoint(note, key.verifier())


def test_checkpoint_error_is_value_error():
    assert issubclass(CheckpointError, ValueError)


def test_sign_note_rejects_bad_text(key):
    for text in ["", "no newline", "ctrl\x07char\n"]:
        with pytest.raises(ValueError):
            sign_note(text, key)


# --- Key files ------------------------------------------------------------------------


def test_key_file_mode_and_round_trip(key, tmp_path):
    path = tmp_path / "log.key"
    key.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = SigningKey.load(path)
    assert loaded.name == key.name
    assert loaded.public_bytes() == key.public_bytes()
    assert loaded.verifier_key() == key.verifier_key()
    cp = sample_checkpoint()
    assert open_checkpoint(sign_checkpoint(cp, loaded), key.verifier()) == cp
    lines = path.read_text().split("\n")
    assert lines[0] == key.name
    assert len(base64.b64decode(lines[1], validate=True)) == 32
    assert lines[2:] == [""]


@pytest.mark.parametrize("umask", [0, 0o022, 0o077, 0o277])
def test_key_file_mode_is_0600_whatever_the_umask(key, tmp_path, umask):
    old = os.umask(umask)
    try:
        key.save(tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o600


def test_key_file_is_never_overwritten(key, other_key, tmp_path):
    path = tmp_path / "log.key"
    key.save(path)
    with pytest.raises(FileExistsError):
        other_key.save(path)
    assert SigningKey.load(path).public_bytes() == key.public_bytes()


def test_key_file_without_final_newline_loads(key, tmp_path):
    path = tmp_path / "k"
    key.save(path)
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    assert SigningKey.load(path).public_bytes() == key.public_bytes()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "2 lines"),
        (b"name-only\n", "2 lines"),
        (b"n\n" + base64.b64encode(bytes(32)) + b"\nextra\n", "2 lines"),
        (b"bad name\n" + base64.b64encode(bytes(32)) + b"\n", "space"),
        (b"a+b\n" + base64.b64encode(bytes(32)) + b"\n", r"\+"),
        (b"n\n" + base64.b64encode(bytes(31)) + b"\n", "31 bytes"),
        (b"n\nnot base64!\n", "base64"),
        (b"n\n\xff\xfe\n", "UTF-8"),
        (b"n\n" + b"A" * 5000 + b"\n", "too large"),
    ],
)
def test_malformed_key_files(tmp_path, content, message):
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        SigningKey.load(path)


def test_signing_key_repr_hides_secret(key):
    text = repr(key)
    assert key.name in text
    assert base64.b64encode(key._private_bytes()).decode() not in text


def test_a_chosen_log_origin_is_fixed_when_the_store_is_made(mount_factory, tmp_path) -> None:
    from tests.conftest import run_cli

    mnt = mount_factory("--log-origin", "models.example.com/worm")
    (mnt.path / "f").write_bytes(b"x")
    note = run_cli("log", "checkpoint", str(mnt.path), check=True).stdout
    assert note.split("\n")[0] == "models.example.com/worm"
    assert run_cli("log", "pubkey", str(mnt.path), check=True).stdout.startswith(
        "models.example.com/worm+")
    mnt.stop()
    other = run_cli("mount", str(mnt.state), str(mnt.path), "--log-origin", "elsewhere/log")
    assert other.returncode == 2 and "fixed when it was created" in other.stderr
    assert "Traceback" not in other.stderr
    mnt.options = []  # a later mount without the flag keeps the store's origin
    mnt.start()
    assert run_cli("log", "checkpoint", str(mnt.path), check=True).stdout.startswith(
        "models.example.com/worm\n")
    assert run_cli("log", "verify", str(mnt.path)).returncode == 0
    (tmp_path / "n").mkdir()
    bad = run_cli("mount", str(tmp_path / "s2"), str(tmp_path / "n"), "--log-origin", "a b")
    assert bad.returncode == 2 and "printable" in bad.stderr


# ------------------------------------------------------------------ transient checkpoints
def test_a_transient_checkpoint_is_replaced_by_the_next_and_a_kept_one_is_not(tmp_path):
    from worm_fs.audit.anchor import keep_checkpoint, transient_checkpoint, write_checkpoint
    from worm_fs.store import Store

    key = SigningKey.generate("worm-fs/00000000000000aa")
    store = Store(tmp_path)
    root = hashlib.sha256(b"r").digest()

    def sign(size: int, transient: bool) -> None:
        with store.write() as tx:
            write_checkpoint(tx, key, key.name, size, root, transient=transient)

    def kept() -> list[int]:
        with store.read() as rt:
            return [size for size, _ in rt.iter_checkpoints()]

    try:
        sign(5, False)
        sign(6, True)
        sign(7, True)  # replaces 6
        assert kept() == [5, 7]
        sign(9, False)  # a kept one replaces the transient one too
        assert kept() == [5, 9]
        sign(10, True)
        sign(10, False)  # asked for again (log checkpoint, a manifest): kept for good
        sign(11, True)
        assert kept() == [5, 9, 10, 11]
        with store.write() as tx:  # a witness cosigned it
            keep_checkpoint(tx, 11)
        sign(12, True)
        assert kept() == [5, 9, 10, 11, 12]
        with store.read() as rt:
            assert transient_checkpoint(rt) == 12
    finally:
        store.close()
