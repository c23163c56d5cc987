"""Witnesses: independent parties asked to cosign each new signed checkpoint.

A client of the C2SP ``tlog-witness`` protocol (c2sp.org/tlog-witness). Each configured
witness (URL and ``cosignature/v1`` verifier key) is sent the newest stored checkpoint
with ``POST <url>/add-checkpoint`` and the body::

    old <size the witness last cosigned>\\n
    <base64 consistency proof line>\\n ...
    \\n
    <the signed checkpoint note>

A 200 answer carries the witness's cosignature lines; they are verified and stored with
the checkpoint (the note in the ``checkpoints`` database gains the lines). A 409 answer
says which size the witness holds: the request is repeated once with a proof from that
size if it is one of ours. 422 (bad proof), 403/404 (unknown log or key), 400 and
network errors are logged, counted and retried with an exponential back-off.

Per witness, the store keeps (in ``meta``, key ``witness/<name>+<key hash>``) the size it
last cosigned, when, the errors and the last one; ``stats`` and ``--prometheus`` read it.

Concurrency: one thread of the daemon, off the FUSE path. It reads the store with read
transactions, does its HTTP with no transaction open, and changes the store only
through committer jobs: a witness that is down or slow never blocks writers, the
committer or checkpointing.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worm_fs.audit.anchor import keep_checkpoint
from worm_fs.audit.checkpoint import (
    ALG_COSIGNATURE,
    CheckpointError,
    VerifierKey,
    add_signatures,
    parse_signature_lines,
    verify_cosignature,
)
from worm_fs.audit.merkle import consistency_proof, leaf_hash
from worm_fs.errors import WormError
from worm_fs.store import ReadTxn, Store, WriteTxn

log = logging.getLogger(__name__)

STATE_PREFIX = "witness/"
CONFIGURED_META = "witnesses_configured"
#: seconds: first retry after a failure, doubling up to the maximum
BACKOFF_MIN = 1.0
BACKOFF_MAX = 300.0
HTTP_TIMEOUT = 10.0
#: how often the thread looks for a new checkpoint when not woken
POLL_SECONDS = 1.0
#: a cosignature more than this far in the future is not accepted
CLOCK_SKEW_SECONDS = 300


@dataclass(frozen=True)
class Witness:
    """A configured witness: its base URL and its ``cosignature/v1`` verifier key."""

    url: str
    key: VerifierKey

    @classmethod
    def parse(cls, spec: str) -> Witness:
        """Parse ``URL=VKEY`` (a verifier key has no ``=``); :class:`ValueError` if bad."""
        url, sep, vkey = spec.strip().rpartition("=")
        if not sep or not url.startswith(("http://", "https://")):
            raise ValueError(f"witness {spec!r} must look like http(s)://HOST[/PATH]=VKEY")
        try:
            key = VerifierKey.parse(vkey, algorithms=(ALG_COSIGNATURE,))
        except ValueError as exc:
            raise ValueError(f"witness {url}: {exc}") from None
        return cls(url.rstrip("/"), key)

    @property
    def id(self) -> str:
        """``<name>+<key hash hex>``: how the store and the metrics name the witness."""
        return f"{self.key.name}+{self.key.key_hash.hex()}"


@dataclass
class WitnessState:
    """What the store keeps about one witness (JSON in ``meta``)."""

    url: str
    size: int = 0  # the size it last cosigned (0: none yet)
    cosigned_ns: int = 0  # when it last cosigned
    since_ns: int = 0  # when it was first configured
    errors: int = 0
    last_error: str | None = None
    last_error_ns: int = 0

    @classmethod
    def load(cls, rt: ReadTxn, witness_id: str) -> WitnessState | None:
        raw = rt.get_meta(STATE_PREFIX + witness_id)
        return None if raw is None else cls(**json.loads(raw))

    def save(self, tx: WriteTxn, witness_id: str) -> None:
        tx.put_meta(STATE_PREFIX + witness_id,
                    json.dumps(self.__dict__, sort_keys=True).encode())


def request_body(old_size: int, proof: list[bytes], note: str) -> bytes:
    """The ``add-checkpoint`` request body."""
    lines = [f"old {old_size}"] + [base64.b64encode(h).decode() for h in proof]
    return ("\n".join(lines) + "\n\n" + note).encode()


def configure(tx: WriteTxn, witnesses: list[Witness], now_ns: int) -> None:
    """Record which witnesses this mount asks (committer job at start-up)."""
    for w in witnesses:
        state = WitnessState.load(tx, w.id) or WitnessState(url=w.url, since_ns=now_ns)
        state.url = w.url
        state.save(tx, w.id)
    tx.put_meta(CONFIGURED_META, json.dumps(sorted(w.id for w in witnesses)).encode())


def witness_status(rt: ReadTxn, now_ns: int) -> list[dict[str, Any]]:
    """Per configured witness: its cosigned size, how far (records and seconds) it lags
    the newest checkpoint, its error count and last error."""
    configured = json.loads(rt.get_meta(CONFIGURED_META) or b"[]")
    newest = (rt.newest_checkpoint() or (0, b""))[0]
    out = []
    for witness_id in configured:
        state = WitnessState.load(rt, witness_id)
        if state is None:
            continue
        behind = max(0, newest - state.size)
        in_sync_ns = max(state.cosigned_ns, state.since_ns)
        out.append({
            "witness": witness_id, "url": state.url, "cosigned_size": state.size,
            "lag_records": behind,
            "lag_seconds": round(max(0, now_ns - in_sync_ns) / 1e9, 3) if behind else 0.0,
            "errors": state.errors, "last_error": state.last_error,
            "failing": bool(state.last_error) and state.last_error_ns > state.cosigned_ns,
        })
    return out


@dataclass
class WitnessReport:
    """What ``log verify --witness`` found: the newest checkpoint cosigned by a quorum
    (``witnessed_size``, 0 if none) and every problem (a bad cosignature anywhere, no
    quorum on any checkpoint)."""

    quorum: int
    witnessed_size: int = 0
    cosigners: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.witnessed_size > 0


def check_cosignatures(notes: list[tuple[int, str]], keys: list[VerifierKey], quorum: int,
                       now_s: int) -> WitnessReport:
    """Check the cosignatures of ``keys`` on the checkpoints ``notes`` ((size, note),
    ascending). Every cosignature of a given key must verify and carry a timestamp no
    later than ``now_s`` + :data:`CLOCK_SKEW_SECONDS`; the newest checkpoint cosigned by
    at least ``quorum`` of the keys is the witnessed one."""
    report = WitnessReport(quorum=quorum)
    for size, note in notes:
        signers = []
        for key in keys:
            try:
                timestamp = verify_cosignature(note, key)
            except CheckpointError as exc:
                report.problems.append(f"checkpoint {size}: {exc}")
                continue
            if timestamp is None:
                continue
            if timestamp > now_s + CLOCK_SKEW_SECONDS:
                report.problems.append(f"checkpoint {size}: the cosignature by {key.name} "
                                       f"is dated in the future ({timestamp})")
                continue
            signers.append(key.name)
        if len(signers) >= quorum:
            report.witnessed_size, report.cosigners = size, signers
    if not report.witnessed_size:
        report.problems.append(f"no stored checkpoint is cosigned by {quorum} of the "
                               f"{len(keys)} given witness(es)")
    return report


class WitnessError(Exception):
    """One failed attempt; the message is what ``stats`` shows as the last error."""


@dataclass
class _Peer:
    witness: Witness
    failures: int = 0
    next_try: float = 0.0  # monotonic
    said_size: int | None = field(default=None)  # a size from a 409, to retry from


class Witnesser:
    """The daemon's witness thread. ``commit(fn)`` runs ``fn(tx)`` as a committer job.

    :meth:`start` starts the thread, :meth:`wake` asks it to look now (after a new
    checkpoint), :meth:`stop` ends it (an answer in flight is waited for at most
    :data:`HTTP_TIMEOUT`).
    """

    def __init__(self, store: Store, commit: Callable[[Callable[[WriteTxn], Any]], Any],
                 witnesses: list[Witness], *, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.store = store
        self._commit = commit
        self._peers = [_Peer(w) for w in witnesses]
        self._clock = clock
        self._leaves: list[bytes] = []
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        now = time.time_ns()
        self._commit(lambda tx: configure(tx, [p.witness for p in self._peers], now))
        self._thread = threading.Thread(target=self._run, name="worm-fs-witness", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(HTTP_TIMEOUT + 5)

    def _run(self) -> None:
        while not self._stopping:
            try:
                self.round()
            except Exception:
                log.exception("witness round failed unexpectedly; will retry")
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()

    def round(self) -> None:
        """Ask every witness that is due and behind the newest checkpoint (one pass)."""
        for peer in self._peers:
            if self._stopping or self._clock() < peer.next_try:
                continue
            try:
                self._ask(peer)
            except WitnessError as exc:
                self._failed(peer, str(exc))
            except WormError as exc:  # the store refused the change: try again later
                log.warning("witness %s: storing its answer failed (%s)", peer.witness.url,
                            exc.message)
                peer.next_try = self._clock() + BACKOFF_MIN
            else:
                peer.failures, peer.next_try = 0, 0.0

    def _newest(self, witness_id: str) -> tuple[int, str, WitnessState]:
        with self.store.read() as rt:
            newest, note_bytes = rt.newest_checkpoint() or (0, b"")
            note = note_bytes.decode()
            state = WitnessState.load(rt, witness_id) or WitnessState(url="")
            for _, raw in rt.iter_records(len(self._leaves)):
                self._leaves.append(leaf_hash(raw))
        return newest, note, state

    def _ask(self, peer: _Peer) -> None:
        w = peer.witness
        size, note, state = self._newest(w.id)
        if size == 0 or state.size >= size:
            return
        old = state.size
        for _attempt in range(2):
            status, body = self._post(w, old, size, note)
            if status == 200:
                self._cosigned(w, size, note, body)
                return
            if status == 409:
                theirs = _size_of(body)
                if theirs is None or theirs > size:
                    raise WitnessError(
                        f"409: the witness holds size {theirs} but our newest checkpoint "
                        f"is {size} (a rewound or forked log?)")
                if theirs == old:
                    raise WitnessError(f"409 for old size {old} that it says it holds")
                log.info("witness %s holds size %d, not %d: retrying from it", w.url,
                         theirs, old)
                old = theirs
                continue
            raise WitnessError(_explain(status, body))
        raise WitnessError(f"409 again after retrying from size {old}")

    def _post(self, w: Witness, old: int, size: int, note: str) -> tuple[int, bytes]:
        proof = consistency_proof(self._leaves[:size], old)
        req = urllib.request.Request(
            w.url + "/add-checkpoint", data=request_body(old, proof, note), method="POST",
            headers={"Content-Type": "text/plain; charset=utf-8"})
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
                return resp.status, resp.read(65536)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(65536)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise WitnessError(f"cannot reach {w.url}: {reason}") from None

    def _cosigned(self, w: Witness, size: int, note: str, body: bytes) -> None:
        now_ns = time.time_ns()
        try:
            mine = "".join(line + "\n" for line in body.decode("utf-8").splitlines()
                           if _is_line_of(line + "\n", w.key))
            if not mine:
                raise CheckpointError("no signature: no cosignature line of its key")
            timestamp = verify_cosignature(add_signatures(note, mine), w.key)
            if timestamp is None or timestamp > now_ns // 10**9 + CLOCK_SKEW_SECONDS:
                raise CheckpointError("bad signature: its timestamp is in the future")
        except (UnicodeDecodeError, CheckpointError) as exc:
            raise WitnessError(f"200 with an unusable cosignature: {exc}") from None

        def store(tx: WriteTxn) -> None:
            kept = (tx.get_checkpoint(size) or note.encode()).decode()
            tx.put_checkpoint(size, add_signatures(kept, mine).encode())
            keep_checkpoint(tx, size)  # cosigned: kept for good, even if transient
            state = WitnessState.load(tx, w.id) or WitnessState(url=w.url, since_ns=now_ns)
            state.size, state.cosigned_ns = size, now_ns
            state.save(tx, w.id)

        self._commit(store)
        log.info("witness %s cosigned the checkpoint of size %d", w.url, size)

    def _failed(self, peer: _Peer, message: str) -> None:
        peer.failures += 1
        delay = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (peer.failures - 1))
        peer.next_try = self._clock() + delay
        if peer.failures == 1 or delay == BACKOFF_MAX:
            log.warning("witness %s: %s (retrying in %.0f s)", peer.witness.url, message, delay)
        now_ns = time.time_ns()
        w = peer.witness

        def record(tx: WriteTxn) -> None:
            state = WitnessState.load(tx, w.id) or WitnessState(url=w.url, since_ns=now_ns)
            state.errors += 1
            state.last_error, state.last_error_ns = message, now_ns
            state.save(tx, w.id)

        try:
            self._commit(record)
        except WormError as exc:
            log.warning("witness %s: could not record the error (%s)", w.url, exc.message)


def _is_line_of(line: str, key: VerifierKey) -> bool:
    try:
        ((name, raw),) = parse_signature_lines(line)
    except (CheckpointError, ValueError):
        return False
    return name == key.name and raw[:4] == key.key_hash


def _size_of(body: bytes) -> int | None:
    text = body.decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def _explain(status: int, body: bytes) -> str:
    what = {400: "bad request (old size above the checkpoint's?)",
            403: "the witness does not accept our log's key or signature",
            404: "the witness does not know our log's origin",
            422: "the witness rejected the consistency proof"}.get(status, "unexpected answer")
    detail = body.decode("utf-8", "replace").strip().splitlines()[:1]
    return f"{status}: {what}" + (f" ({detail[0][:200]})" if detail else "")
