"""A minimal C2SP tlog-witness server on loopback, for tests.

It witnesses one log (origin and verifier key given), answers ``POST /add-checkpoint``
as c2sp.org/tlog-witness says, and keeps its state (the size and root it last
cosigned) in a JSON file, replaced atomically before it answers, so a restart keeps it:

* 403 if the note is not signed by the log's key, 404 for another origin;
* 400 if ``old`` is above the checkpoint's size;
* 409 with its size (``text/x.tlog.size``) if ``old`` is not the size it holds;
* 422 if the consistency proof from its root to the new one does not verify;
* else 200 with a ``cosignature/v1`` line, built here with ``cryptography`` alone.

(No PyPI witness fits: ``aics-witness`` needs Python 3.12, the project runs on 3.11.)
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from worm_fs.audit.checkpoint import CheckpointError, VerifierKey, open_checkpoint
from worm_fs.audit.merkle import verify_consistency


class WitnessServer:
    """``start()``/``stop()`` it (the port stays the same); ``vkey`` is its verifier key."""

    def __init__(self, state_file: Path, name: str = "witness.test/w1") -> None:
        self.state_file = state_file
        self.name = name
        self.private = Ed25519PrivateKey.generate()
        public = self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_hash = hashlib.sha256(name.encode() + b"\n\x04" + public).digest()[:4]
        key_data = base64.b64encode(bytes([4]) + public).decode()
        self.vkey = f"{name}+{self.key_hash.hex()}+{key_data}"
        self.log_key: VerifierKey | None = None
        self.origin: str | None = None
        self.port = 0
        self.requests: list[int] = []  # status of each answered request
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def witness_log(self, origin: str, log_vkey: str) -> None:
        self.origin, self.log_key = origin, VerifierKey.parse(log_vkey)

    def state(self) -> tuple[int, str]:
        if not self.state_file.exists():
            return 0, ""
        data = json.loads(self.state_file.read_text())
        return data["size"], data["root"]

    def set_state(self, size: int, root_b64: str) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"size": size, "root": root_b64}))
        os.replace(tmp, self.state_file)

    def start(self) -> WitnessServer:
        handler = type("Handler", (_Handler,), {"witness": self})
        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def cosign(self, body: str) -> str:
        now = int(time.time())
        message = f"cosignature/v1\ntime {now}\n".encode() + body.encode()
        raw = self.key_hash + now.to_bytes(8, "big") + self.private.sign(message)
        return f"\u2014 {self.name} {base64.b64encode(raw).decode()}\n"

    def add_checkpoint(self, request: bytes) -> tuple[int, str]:
        """(status, body) for one add-checkpoint request body."""
        text = request.decode()
        head, sep, note = text.partition("\n\n")
        lines = head.split("\n")
        if not sep or not lines[0].startswith("old "):
            return 400, "malformed request\n"
        old = int(lines[0][4:])
        proof = [base64.b64decode(line) for line in lines[1:]]
        if note.split("\n", 1)[0] != self.origin:
            return 404, "unknown log\n"
        assert self.log_key is not None
        try:
            cp = open_checkpoint(note, self.log_key)
        except CheckpointError as exc:
            return 403, f"{exc}\n"
        if old > cp.size:
            return 400, "old size above the checkpoint size\n"
        with self._lock:
            size, root = self.state()
            if old != size:
                return 409, f"{size}\n"
            if old and not verify_consistency(old, cp.size, base64.b64decode(root), cp.root,
                                              proof):
                return 422, "consistency proof does not verify\n"
            self.set_state(cp.size, base64.b64encode(cp.root).decode())
        return 200, self.cosign(cp.body())


class _Handler(BaseHTTPRequestHandler):
    witness: WitnessServer

    def do_POST(self) -> None:  # noqa: N802 (the http.server name)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/add-checkpoint":
            status, text = 404, "not found\n"
        else:
            status, text = self.witness.add_checkpoint(body)
        self.witness.requests.append(status)
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/x.tlog.size" if status == 409
                         else "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass
