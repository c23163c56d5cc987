"""The ``worm-fs`` command.

Every subcommand has ``--help``; those that report have ``--json``. Errors print one
line (``worm-fs: ...``) and exit with the code of their class in
:mod:`worm_fs.errors`; only a bug prints a traceback (exit 70).
"""

from __future__ import annotations

import argparse
import errno as errno_mod
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worm_fs import errors
from worm_fs.config import add_mount_flags
from worm_fs.config import as_flags as settings_as_flags
from worm_fs.config import resolve as resolve_settings
from worm_fs.errors import NotAStore, UsageError, WormError
from worm_fs.locate import Location, locate, open_store

log = logging.getLogger("worm_fs")


# ---------------------------------------------------------------------- output helpers
#: Characters that could end a line, move the cursor, recolour or reorder what a
#: terminal shows, or not encode at all: backslash (the escape itself), C0 controls,
#: DEL, C1 controls, lone surrogates (names that are not UTF-8), and the invisible
#: format characters that matter on a screen (soft hyphen, Arabic letter mark, Mongolian
#: vowel separator, zero-width and direction marks, line and paragraph separators, bidi
#: embeddings, overrides and isolates, word joiner and invisible operators, BOM,
#: interlinear annotation).
_UNPRINTABLE = re.compile(
    r"[\\\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064"
    r"\u2066-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff]")
_UNPRINTABLE_OR_SPACE = re.compile(_UNPRINTABLE.pattern[:-1] + " ]")
_SHORT_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    code = ord(ch)
    return _SHORT_ESCAPES.get(ch) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(value: object, *, field: bool = False) -> str:
    """``value`` as text for the human-readable output: one line, safe for a terminal.

    Every character in :data:`_UNPRINTABLE` is shown as an escape (``\\n``, ``\\x1b``,
    ``\\u202e``, ``\\udcff`` for a byte that is not UTF-8) and a backslash as ``\\\\``,
    so the text is unambiguous and a name cannot add lines or terminal sequences. With
    ``field``, a space is ``\\x20`` too, for values printed among space-separated fields.
    JSON output does not go through here: it escapes by itself.
    """
    pattern = _UNPRINTABLE_OR_SPACE if field else _UNPRINTABLE
    return pattern.sub(_escape, str(value))


def emit(args: argparse.Namespace, data: Any, human: Callable[[Any], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=None if isinstance(data, list) else 2, sort_keys=True))
    else:
        print(human(data))


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{n} B"


def _progress(label: str, done: int, total: int) -> None:
    if sys.stderr.isatty():
        print(f"\r{label}: {done}/{total}", end="", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- mount / umount
def _check_mount_args(args: argparse.Namespace) -> tuple[Path, Path]:
    resolve_settings(args)
    state_dir = Path(args.state_dir).absolute()
    mountpoint = Path(args.mountpoint).absolute()
    if args.settle < 0:
        raise UsageError("--settle must be 0 or more seconds")
    if args.settle_limit <= 0:
        raise UsageError("--settle-limit must be more than 0 seconds")
    if args.open_rate_limit < 0:
        raise UsageError("--open-rate-limit must be 0 (no limit) or more opens per second")
    if args.retention < 0 or args.request_ttl <= 0:
        raise UsageError("--retention must be 0 or more days, --request-ttl more than 0")
    if args.bucket is not None:
        from worm_fs.replication.s3 import BucketUrl

        BucketUrl.parse(args.bucket)
        if args.object_retention < 0:
            raise UsageError("--object-retention must be 0 or more days")
    elif args.replica is not None:
        from worm_fs.replication.s3 import BucketUrl

        BucketUrl.parse(args.replica)
        if not args.pubkey:
            raise UsageError("--replica needs --pubkey KEY (worm-fs log pubkey on the "
                             "primary)")
        if args.cache_size <= 0 or args.poll <= 0:
            raise UsageError("--cache-size and --poll must be more than 0")
    elif args.s3_endpoint is not None:
        raise UsageError("--s3-endpoint needs --bucket or --replica")
    if args.replicate == "sync" and args.bucket is None:
        raise UsageError("--replicate sync needs --bucket")
    if not 0 < args.max_retention <= 36_525 or args.retention > args.max_retention:
        raise UsageError("--max-retention must be more than 0 and at most 36525 days (100 "
                         "years), and at least --retention")
    from worm_fs.daemon import resolve_group

    resolve_group(args.admin_group)
    resolve_group(args.seal_group)
    _seal_read_mode(args)
    if not mountpoint.is_dir():
        raise UsageError(f"mountpoint {mountpoint} does not exist or is not a directory")
    if os.path.ismount(mountpoint):
        raise UsageError(f"{mountpoint} is already a mountpoint")
    if any(mountpoint.iterdir()):
        raise UsageError(f"mountpoint {mountpoint} is not empty")
    if state_dir.exists():
        if not state_dir.is_dir():
            raise UsageError(f"state directory {state_dir} is not a directory")
        ours = {"store", "daemon.log", "daemon.lock", "audit-signing.key", "space.reserve",
                "cache", "replica-status.json"}
        if not (state_dir / "store").exists() and any(
            p.name not in ours for p in state_dir.iterdir()
        ):
            raise UsageError(f"{state_dir} is not empty and holds no worm-fs store")
    elif not state_dir.parent.is_dir():
        raise UsageError(f"parent of the state directory ({state_dir.parent}) does not exist")
    if state_dir == mountpoint or mountpoint in state_dir.parents:
        raise UsageError("the state directory must not be inside the mountpoint")
    if not Path("/dev/fuse").exists():
        raise UsageError("/dev/fuse is missing: load the fuse module or install fuse3")
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        raise UsageError("not root and fusermount3 is not installed (apt-get install fuse3)")
    state_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(state_dir, 0o700)
    return state_dir, mountpoint


def _seal_read_mode(args: argparse.Namespace) -> int:
    from worm_fs.core.policy import parse_read_mode

    if args.seal_read_mode is None:
        return 0
    try:
        return parse_read_mode(args.seal_read_mode, "--seal-read-mode")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _mount_options(args: argparse.Namespace) -> Any:
    from worm_fs.daemon import MountOptions

    return MountOptions(
        settle=args.settle,
        settle_limit=args.settle_limit,
        allow_other=args.allow_other,
        audit_reads=args.audit_reads,
        checkpoint_records=args.checkpoint_records,
        checkpoint_seconds=args.checkpoint_seconds,
        log_origin=args.log_origin,
        admin_group=args.admin_group,
        seal_read_mode=_seal_read_mode(args),
        seal_group=args.seal_group,
        retention_days=args.retention,
        max_retention_days=args.max_retention,
        bucket=args.bucket,
        s3_endpoint=args.s3_endpoint,
        object_lock=args.object_lock,
        object_retention_days=args.object_retention,
        replicate=args.replicate,
        request_ttl_days=args.request_ttl,
        runtime_dir=Path(args.runtime_dir) if args.runtime_dir else None,
        read_ahead_kib=args.read_ahead_kib,
        open_rate_limit=args.open_rate_limit,
        witnesses=_witnesses(args.witness),
        replica=args.replica,
        pubkey=args.pubkey,
        cache_size_gib=args.cache_size,
        poll_seconds=args.poll,
        debug_fuse=args.debug_fuse,
    )


def _witnesses(specs: list[str] | None) -> tuple[str, ...]:
    """The ``--witness URL=VKEY`` values, each checked (UsageError, exit 2, if bad)."""
    from worm_fs.audit.witness import Witness

    for spec in specs or ():
        try:
            Witness.parse(spec)
        except ValueError as exc:
            raise UsageError(f"bad --witness: {exc}") from None
    return tuple(specs or ())


def cmd_mount(args: argparse.Namespace) -> int:
    state_dir, mountpoint = _check_mount_args(args)
    _witnesses(args.witness)
    if args.foreground:
        from worm_fs.daemon import Daemon

        _setup_logging(args.verbose)
        daemon = Daemon(state_dir, mountpoint, _mount_options(args))
        if args.ready_fd is None:
            print(f"worm-fs: serving {mountpoint} (state in {state_dir}); "
                  "Ctrl-C or `worm-fs umount` to stop", file=sys.stderr, flush=True)
        daemon.run(ready_fd=args.ready_fd)
        return 0
    return _spawn_daemon(args, state_dir, mountpoint)


def _spawn_daemon(args: argparse.Namespace, state_dir: Path, mountpoint: Path) -> int:
    read_end, write_end = os.pipe()
    command = [
        sys.executable, "-m", "worm_fs", "mount", str(state_dir), str(mountpoint),
        "--foreground", "--ready-fd", str(write_end), *settings_as_flags(args),
    ]
    log_path = state_dir / "daemon.log"
    with open(log_path, "ab") as log_file:
        child = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            pass_fds=(write_end,), start_new_session=True,
        )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as ready:
        answer = ready.read(6)
    if answer == b"ready\n":
        print(f"mounted {mountpoint} (daemon pid {child.pid}, log {log_path})")
        return 0
    code = child.wait()
    last = ""
    try:
        lines = log_path.read_text(errors="replace").strip().splitlines()
        last = lines[-1] if lines else ""
    except OSError:
        pass
    last = last.removeprefix("worm-fs: ")  # the daemon's own one-line error
    print(f"worm-fs: mount failed: {printable(last or f'daemon exited with {code}')}",
          file=sys.stderr)
    return code or errors.EXIT_INTERNAL


def cmd_umount(args: argparse.Namespace) -> int:
    try:
        loc = locate(args.mountpoint, allow_state_dir=False)
    except OSError as exc:
        if exc.errno != errno_mod.ENOTCONN:
            raise
        # The daemon died and left its mount behind ("transport endpoint is not connected").
        _fusermount(Path(args.mountpoint).absolute(), lazy=True)
        print(f"unmounted {args.mountpoint} (its daemon was no longer running)")
        return 0
    assert loc.mountpoint is not None
    if loc.daemon_pid:
        try:
            os.kill(loc.daemon_pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        except PermissionError:
            _fusermount(loc.mountpoint)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not os.path.ismount(loc.mountpoint) and not _alive(loc.daemon_pid):
                print(f"unmounted {loc.mountpoint}")
                return 0
            time.sleep(0.05)
    _fusermount(loc.mountpoint)
    print(f"unmounted {loc.mountpoint}")
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _fusermount(mountpoint: Path, *, lazy: bool = False) -> None:
    command = ["fusermount3", "-u", *(["-z"] if lazy else []), str(mountpoint)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise WormError(f"could not unmount {mountpoint}: {result.stderr.strip()}",
                        errno=16)


# ---------------------------------------------------------------------- stat / stats / verify
def cmd_stat(args: argparse.Namespace) -> int:
    path = Path(args.path)
    locate(path, allow_state_dir=False)
    st = os.lstat(path)

    def xattr(name: str) -> str | None:
        try:
            return os.getxattr(path, name, follow_symlinks=False).decode()
        except OSError:
            return None

    import stat as stat_mod

    if stat_mod.S_ISDIR(st.st_mode):
        state = "directory"
    elif stat_mod.S_ISLNK(st.st_mode):
        state = "symlink"
    else:
        state = xattr("user.worm.state") or "unknown"
    data = {
        "path": str(path),
        "state": state,
        "size": st.st_size,
        "sha256": xattr("user.worm.sha256"),
        "sealed_at": xattr("user.worm.sealed_at"),
        "retain_until": xattr("user.worm.retain_until"),
        "hold": xattr("user.worm.hold"),
        "provenance": json.loads(xattr("user.worm.provenance") or "null"),
        "mode": oct(stat_mod.S_IMODE(st.st_mode)),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mtime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime)),
    }
    emit(args, data, lambda d: "\n".join(f"{k:>10}: {printable(v)}" for k, v in d.items()
                                         if v is not None))
    return 0


#: Uids listed by the human form of ``stats`` (the most bytes first); --json has all.
STATS_TOP_UIDS = 10


def cmd_replication_status(args: argparse.Namespace) -> int:
    from worm_fs.replication.follower import SOURCE
    from worm_fs.replication.uploader import queue_status

    loc = locate(args.path)
    store = open_store(loc)
    try:
        with store.read() as rt:
            data = queue_status(rt, time.time_ns())
            follows = rt.get_meta(SOURCE)
    finally:
        store.close()
    if follows is not None:
        return _replica_status(args, loc.state_dir, data)
    if data["bucket"] is None:
        raise UsageError(f"{args.path}: this store does not replicate to a bucket "
                         "(mount it with --bucket)")

    def human(d: dict[str, Any]) -> str:
        return "\n".join([
            f"bucket:           {d['bucket']}",
            f"pending:          {d['pending_objects']} objects, "
            f"{_human_bytes(d['pending_bytes'])}",
            f"lag:              {d['lag_seconds']} s (the oldest pending object)",
            f"uploaded:         {d['uploaded_objects']} objects, "
            f"{_human_bytes(d['uploaded_bytes'])}",
            f"log uploaded to:  {d['log_uploaded_size']} records",
            f"last error:       {printable(d['last_error']) or '-'}",
        ])

    emit(args, data, human)
    return 0


def _replica_status(args: argparse.Namespace, state_dir: Path, log_upload: dict) -> int:
    """``replication status`` of a replica: what it follows, how far behind, its cache.
    Exit 1 if it refuses the bucket's log or a file (it serves what it verified), or
    found a replaced object since it started (served from the version that checks;
    ``replaced_objects`` counts them since the replica was made)."""
    from worm_fs.replication.follower import read_status

    data = read_status(state_dir)
    if data is None:
        raise UsageError(f"{state_dir}: no replica status yet (is it mounted?)")
    data["own_log_upload"] = log_upload

    def human(d: dict[str, Any]) -> str:
        return "\n".join([
            f"replica of:       {d['bucket']}",
            f"following:        tree size {d['followed_size']} (root {d['followed_root'][:16]}…)",
            f"behind:           {d['behind_records']} records, {d['behind_seconds']} s",
            f"cache:            {_human_bytes(d.get('cache_bytes', 0))} of "
            f"{_human_bytes(d.get('cache_limit', 0))}, hit rate "
            f"{d.get('cache_hit_rate', 0.0):.1%}",
            f"refused:          {printable(d['refused']) or '-'}",
            f"replaced objects: {d.get('replaced_since_start', 0)} since the start, "
            f"{d.get('replaced_objects', 0)} in all"
            + (f" (last: {printable(d['last_replaced'])})" if d.get("last_replaced") else ""),
            f"last error:       {printable(d['last_error']) or '-'}",
        ])

    emit(args, data, human)
    found_now = data.get("replaced_since_start", data.get("replaced_objects"))
    return errors.EXIT_CHECK_FAILED if data["refused"] or found_now else 0


def cmd_stats(args: argparse.Namespace) -> int:
    from worm_fs.audit.log import usage_stats
    from worm_fs.audit.witness import witness_status
    from worm_fs.core.fs import store_stats

    store = open_store(locate(args.path))
    try:
        if args.prometheus:
            from worm_fs.metrics import collect, render

            sys.stdout.write(render(collect(store)))
            return 0
        data = store_stats(store)
        with store.read() as rt:
            data.update(usage_stats(rt))
            data["witnesses"] = witness_status(rt, time.time_ns())
    finally:
        store.close()
    from worm_fs.replication.follower import read_status

    data["replica"] = read_status(store.path)

    def by_uid(d: dict[str, Any]) -> list[str]:
        rows = sorted(d["audit_by_uid"].items(), key=lambda kv: -kv[1]["bytes"])
        lines = [f"  uid {printable(uid, field=True)}: {u['records']} records, "
                 f"{u['bytes']} bytes ({_human_bytes(u['bytes'])})"
                 + (f", {u['throttled']} opens throttled" if u["throttled"] else "")
                 for uid, u in rows[:STATS_TOP_UIDS]]
        if len(rows) > STATS_TOP_UIDS:
            lines.append(f"  ... {len(rows) - STATS_TOP_UIDS} more uids (--json lists all)")
        return lines

    def human(d: dict[str, Any]) -> str:
        return "\n".join([
            f"files:          {d['files']} sealed, {d['quarantined']} quarantined, "
            f"{d['writing']} being written",
            f"logical bytes:  {d['logical_bytes']} ({_human_bytes(d['logical_bytes'])})",
            f"stored bytes:   {d['stored_bytes']} ({_human_bytes(d['stored_bytes'])})",
            f"chunks:         {d['chunks']}",
            f"dedup ratio:    {d['dedup_ratio']}",
            f"freed bytes:    {d['freed_bytes']} ({d['deleted_entries']} entries deleted)",
            f"audit records:  {d['audit_records']} ({d['audit_stored_bytes']} bytes stored "
            f"since per-uid counting began, {d['audit_bytes_per_record']} per record)",
            *by_uid(d),
            f"commits:        {d['commits']} ({d['commit_flushes']} file flushes, "
            f"{d['flushes_per_commit']} per commit; {d['commits_shared']} shared by "
            f"several files; {d['commit_records']} audit records)",
            *(f"usage:          {_quota_line(q)} (sealed and quarantined files)"
              for q in d["quotas"]),
            *(f"witness:        {printable(w['url'])} cosigned {w['cosigned_size']}, "
              f"{w['lag_records']} records / {w['lag_seconds']} s behind, {w['errors']} "
              f"errors (last: {printable(w['last_error']) or '-'})" for w in d["witnesses"]),
            *([f"replica of:     {r['bucket']} at tree size {r['followed_size']}, "
               f"{r['behind_records']} records / {r['behind_seconds']} s behind; cache "
               f"{_human_bytes(r['cache_bytes'])} of {_human_bytes(r['cache_limit'])}; "
               f"refused: {printable(r['refused']) or '-'}"]
              if (r := d["replica"]) else []),
        ])

    emit(args, data, human)
    return 0


def cmd_verify_bucket(args: argparse.Namespace) -> int:
    from worm_fs.replication.bucket_verify import verify_bucket
    from worm_fs.replication.s3 import Bucket, BucketUrl

    if args.path is not None:
        raise UsageError("give PATH or --bucket, not both")
    if not args.pubkey:
        raise UsageError("--bucket needs --pubkey: the bucket cannot vouch for its own key")
    bucket = Bucket(BucketUrl.parse(args.bucket), endpoint=args.s3_endpoint,
                    lock_mode="compliance", retention_days=1)
    report = verify_bucket(bucket, _verifier(None, args.pubkey), progress=_progress,
                           kept=_checkpoint_files(args.checkpoint))
    if sys.stderr.isatty():
        print(file=sys.stderr)
    data = {"ok": report.ok, "bucket": str(bucket.url), "tree_size": report.size,
            "files": report.files, "chunks": report.chunks,
            "retention_expired": report.expired,
            "findings": [f.__dict__ for f in report.findings]}

    def human(d: dict[str, Any]) -> str:
        lines = [f"bad object {printable(f['object'])}: {printable(f['detail'])}"
                 for f in d["findings"]]
        lines.append(f"checked {d['bucket']}: log of {d['tree_size']} records, "
                     f"{d['files']} sealed files, {d['chunks']} chunks: "
                     + ("OK" if d["ok"] else f"{len(d['findings'])} problem(s)"))
        return "\n".join(lines)

    emit(args, data, human)
    return errors.EXIT_OK if report.ok else errors.EXIT_CHECK_FAILED


def cmd_restore(args: argparse.Namespace) -> int:
    from worm_fs.replication.restore import restore
    from worm_fs.replication.s3 import Bucket, BucketUrl

    if not args.pubkey:
        raise UsageError("restore needs --pubkey: the bucket cannot vouch for its own key")
    bucket = Bucket(BucketUrl.parse(args.bucket), endpoint=args.s3_endpoint)
    report = restore(bucket, _verifier(None, args.pubkey), Path(args.state_dir).absolute(),
                     signing_key=Path(args.signing_key) if args.signing_key else None,
                     progress=_progress)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    data = {"state_dir": str(Path(args.state_dir).absolute()), "tree_size": report.size,
            "files": report.files, "entries": report.entries, "chunks": report.chunks,
            "left_out": report.left_out, "signing_key": bool(args.signing_key),
            "replaced": [{"object": o, "detail": why} for o, why in report.replaced]}
    for item in data["replaced"]:  # restored around them: say so, wherever stdout goes
        print(f"worm-fs: warning: replaced object {printable(item['object'])}: "
              f"{printable(item['detail'])}", file=sys.stderr)

    def human(d: dict[str, Any]) -> str:
        lines = [f"restored {d['entries']} entries ({d['files']} sealed files, "
                 f"{d['chunks']} chunks) and {d['tree_size']} audit records into "
                 f"{printable(d['state_dir'])}, all checked against the pinned key"]
        lines += [f"left out (not sealed at the checkpoint): {printable(p)}"
                  for p in d["left_out"]]
        if not d["signing_key"]:
            lines.append("no --signing-key: the store gets a new signing key at its first "
                         "mount; publish its key (user.worm.pubkey) to verifiers")
        return "\n".join(lines)

    emit(args, data, human)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from worm_fs.core.scrub import scrub

    if args.bucket is not None:
        return cmd_verify_bucket(args)
    if args.path is None:
        raise UsageError("give PATH (a mount or state directory), or --bucket")
    from worm_fs.replication.follower import SOURCE

    loc = locate(args.path)
    store = open_store(loc)
    try:
        with store.read() as rt:
            replica = rt.get_meta(SOURCE) is not None
        cache = loc.state_dir / "cache" / "c"

        def cached(key: bytes) -> bytes | None:
            try:
                return (cache / key.hex()).read_bytes()
            except FileNotFoundError:
                return None

        report = scrub(store, progress=_progress, cached=cached if replica else None)
    finally:
        store.close()
    if sys.stderr.isatty():
        print(file=sys.stderr)
    data = {
        "ok": report.ok,
        "chunks": report.chunks,
        "chunk_bytes": report.chunk_bytes,
        "files": report.files,
        "findings": [f.__dict__ for f in report.findings],
    }
    if replica:
        data["files_not_cached"] = report.uncached

    def human(d: dict[str, Any]) -> str:
        lines = [printable(f"corrupt {f['kind']}: {f['path'] + ': ' if f['path'] else ''}"
                           f"{f['detail']}") for f in d["findings"]]
        lines.append(f"checked {d['chunks']} chunks ({_human_bytes(d['chunk_bytes'])}) and "
                     f"{d['files']} sealed files: " + ("OK" if d["ok"] else
                                                      f"{len(d['findings'])} problem(s)"))
        return "\n".join(lines)

    emit(args, data, human)
    return errors.EXIT_OK if report.ok else errors.EXIT_CHECK_FAILED


# ---------------------------------------------------------------------- log
def _verifier(loc: Location | None, given: str | None) -> Any:
    """The key to verify with: ``--pubkey`` if given (a key kept elsewhere), else the one
    the mount publishes, else the store's own key file."""
    from worm_fs.audit.anchor import load_key
    from worm_fs.audit.checkpoint import VerifierKey

    if given:
        text = Path(given).read_text().strip() if Path(given).is_file() else given
        try:
            return VerifierKey.parse(text)
        except ValueError as exc:
            raise UsageError(f"bad --pubkey: {exc}") from None
    if loc is None:
        raise UsageError("no verifier key: give --pubkey")
    if loc.mountpoint is not None:
        try:
            return VerifierKey.parse(os.getxattr(loc.mountpoint, "user.worm.pubkey").decode())
        except OSError:
            pass
    return load_key(loc.state_dir).verifier()


def _json_value(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")).replace("\x7f", "\\u007f")


def _format_record(record: dict[str, Any]) -> str:
    """One line per record, whatever the names in it (see :func:`printable`)."""
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record["time_ns"] / 1e9))
    skip = {"seq", "time_ns", "mono_ns", "boot_id", "op", "result", "path", "uid", "pid",
            "comm", "gid", "leaf_hash"}
    # Other fields as KEY=JSON: ensure_ascii escapes every character but DEL.
    extra = " ".join(
        f"{printable(k, field=True)}={_json_value(v)}"
        for k, v in sorted(record.items()) if k not in skip)
    who = (f"uid={printable(record['uid'], field=True)} "
           f"pid={printable(record.get('pid'), field=True)} "
           f"({printable(record.get('comm', ''), field=True)})") if "uid" in record else ""
    op, result = (printable(record[k], field=True) for k in ("op", "result"))
    return (f"{record['seq']:>7} {when} {op:<10} {result:<7} "
            f"{printable(record.get('path', '-'), field=True)} {who} {extra}").rstrip()


def cmd_log_show(args: argparse.Namespace) -> int:
    from worm_fs.audit.merkle import leaf_hash

    loc = locate(args.path)
    store = open_store(loc)
    next_seq = args.since
    try:
        while True:
            with store.read() as rt:
                batch = list(rt.iter_records(next_seq))
            for seq, raw in batch:
                if args.raw:  # ASCII JSON without a raw newline: one record per line
                    sys.stdout.buffer.write(raw + b"\n")
                    if args.follow:
                        sys.stdout.buffer.flush()
                    next_seq = seq + 1
                    continue
                record = json.loads(raw)
                if args.json:
                    record["leaf_hash"] = leaf_hash(raw).hex()
                    print(json.dumps(record, sort_keys=True), flush=args.follow)
                else:
                    print(_format_record(record), flush=args.follow)
                next_seq = seq + 1
            if not args.follow:
                return 0
            time.sleep(0.2)
    except KeyboardInterrupt:
        return 0
    finally:
        store.close()


def _checkpoint_files(names: list[str] | None) -> list[tuple[str, str]]:
    """``--checkpoint FILE`` arguments as (label, note text); an unreadable one is a
    usage error."""
    out = []
    for name in names or []:
        try:
            out.append((f"checkpoint file {name}", Path(name).read_text()))
        except OSError as exc:
            raise UsageError(f"cannot read {name}: {exc.strerror}") from None
    return out


def cmd_log_verify(args: argparse.Namespace) -> int:
    from worm_fs.audit.verify import verify_log

    loc = locate(args.path)
    verifier = _verifier(loc, args.pubkey)
    witness_keys = _witness_keys(args.witness or [], args.quorum)
    external = _checkpoint_files(args.checkpoint)
    store = open_store(loc)
    try:
        report = verify_log(store, verifier, external)
        with store.read() as rt:
            notes = [(size, note.decode()) for size, note in rt.iter_checkpoints()]
    finally:
        store.close()
    data = report.as_dict()
    ok = report.ok
    if witness_keys:
        from worm_fs.audit.witness import check_cosignatures

        quorum = args.quorum if args.quorum is not None else len(witness_keys)
        witnessed = check_cosignatures(notes, witness_keys, quorum, int(time.time()))
        data["witnesses"] = {"quorum": quorum, "witnessed_size": witnessed.witnessed_size,
                             "cosigners": witnessed.cosigners,
                             "unwitnessed_records": max(
                                 0, report.records - witnessed.witnessed_size),
                             "problems": witnessed.problems}
        ok = ok and witnessed.ok
        data["ok"] = ok

    def human(d: dict[str, Any]) -> str:
        lines = [f"TAMPERED {printable(p)}" for p in d["problems"]]
        lines.append(
            f"{d['records']} records, root {d['root']}, {d['checkpoints_checked']} stored "
            f"checkpoint(s), {d['unanchored_records']} record(s) after the newest checkpoint"
        )
        w = d.get("witnesses")
        if w:
            lines += [f"WITNESS {printable(p)}" for p in w["problems"]]
            if w["witnessed_size"]:
                lines.append(f"witnessed up to {w['witnessed_size']} records by "
                             f"{', '.join(w['cosigners'])} (quorum {w['quorum']}); "
                             f"{w['unwitnessed_records']} record(s) after it")
        problems = len(d["problems"]) + len(w["problems"] if w else [])
        lines.append("log intact" if d["ok"] else f"log FAILED verification "
                     f"({problems} problem(s))")
        return "\n".join(lines)

    emit(args, data, human)
    return errors.EXIT_OK if ok else errors.EXIT_CHECK_FAILED


def _witness_keys(texts: list[str], quorum: int | None) -> list[Any]:
    """The ``--witness`` verifier keys (UsageError, exit 2, if one is bad or the quorum
    is not between 1 and their number)."""
    from worm_fs.audit.checkpoint import ALG_COSIGNATURE, VerifierKey

    keys = []
    for text in texts:
        try:
            keys.append(VerifierKey.parse(text, algorithms=(ALG_COSIGNATURE,)))
        except ValueError as exc:
            raise UsageError(f"bad --witness key: {exc}") from None
    if quorum is not None and not keys:
        raise UsageError("--quorum needs --witness")
    if quorum is not None and not 1 <= quorum <= len(keys):
        raise UsageError(f"--quorum must be between 1 and {len(keys)} (the witnesses given)")
    return keys


def _checkpoint_now(loc: Location) -> str:
    from worm_fs.audit.anchor import load_key, make_checkpoint, stored_origin

    store = open_store(loc, write=True)
    try:
        with store.read() as rt:
            origin = stored_origin(rt)
        return make_checkpoint(store, load_key(loc.state_dir), origin)
    finally:
        store.close()


def cmd_log_checkpoint(args: argparse.Namespace) -> int:
    sys.stdout.write(_checkpoint_now(locate(args.path)))
    return 0


def cmd_log_pubkey(args: argparse.Namespace) -> int:
    print(_verifier(locate(args.path), None))
    return 0


def cmd_log_prove(args: argparse.Namespace) -> int:
    from worm_fs.audit.checkpoint import CheckpointError, open_checkpoint
    from worm_fs.audit.merkle import inclusion_proof
    from worm_fs.audit.verify import LogReport, load_leaves

    loc = locate(args.path)
    store = open_store(loc)
    try:
        with store.read() as rt:
            raw = rt.get_record(args.seq)
            notes = [n.decode() for size, n in rt.iter_checkpoints() if size > args.seq]
    finally:
        store.close()
    if raw is None:
        raise UsageError(f"no record with seq {args.seq}")
    note = notes[0] if notes else _checkpoint_now(loc)  # the smallest tree that covers it
    try:
        cp = open_checkpoint(note, _verifier(loc, None))
    except CheckpointError as exc:
        raise errors.LogTampered(f"the checkpoint covering seq {args.seq}: {exc}") from None
    store = open_store(loc)
    try:
        leaves = load_leaves(store, LogReport())[: cp.size]  # the tree the checkpoint signs
    finally:
        store.close()
    proof = inclusion_proof(leaves, args.seq)
    data = {
        "seq": args.seq,
        "record": raw.decode(),
        "leaf_hash": leaves[args.seq].hex(),
        "tree_size": cp.size,
        "proof": [h.hex() for h in proof],
        "checkpoint": note,
    }
    print(json.dumps(data, indent=2))
    return 0


def cmd_log_consistency(args: argparse.Namespace) -> int:
    """Print the RFC 9162 consistency proof between two signed checkpoints.

    Both ends are stored checkpoints of exactly that size; NEW_SIZE left out (or equal
    to the log's size) signs one of the current tree, as ``log checkpoint`` does. A size
    with no stored checkpoint is a usage error (exit 2) naming the stored sizes.
    """
    from worm_fs.audit.checkpoint import CheckpointError, open_checkpoint
    from worm_fs.audit.merkle import consistency_proof
    from worm_fs.audit.verify import LogReport, load_leaves

    loc = locate(args.path)
    store = open_store(loc)
    try:
        leaves = load_leaves(store, LogReport())
        with store.read() as rt:
            stored = {size: n.decode() for size, n in rt.iter_checkpoints()}
    finally:
        store.close()
    new_size = len(leaves) if args.new_size is None else args.new_size
    if args.old_size > new_size:
        raise UsageError(f"OLD_SIZE {args.old_size} is larger than NEW_SIZE {new_size}")
    if new_size > len(leaves):
        raise UsageError(f"NEW_SIZE {new_size} is beyond the log ({len(leaves)} records)")
    if new_size == len(leaves) and new_size not in stored:
        stored[new_size] = _checkpoint_now(loc)
    notes = {}
    for name, size in (("OLD_SIZE", args.old_size), ("NEW_SIZE", new_size)):
        if size not in stored:
            sizes = ", ".join(str(s) for s in sorted(stored)) or "none"
            raise UsageError(f"no signed checkpoint of size {size} ({name}); stored "
                             f"checkpoint sizes: {sizes}")
        try:
            cp = open_checkpoint(stored[size], _verifier(loc, None))
        except CheckpointError as exc:
            raise errors.LogTampered(f"the checkpoint of size {size}: {exc}") from None
        notes[name] = (stored[size], cp)
    proof = consistency_proof(leaves[:new_size], args.old_size)
    data = {
        "old_size": args.old_size,
        "new_size": new_size,
        "old_root": notes["OLD_SIZE"][1].root.hex(),
        "new_root": notes["NEW_SIZE"][1].root.hex(),
        "proof": [h.hex() for h in proof],
        "old_checkpoint": notes["OLD_SIZE"][0],
        "new_checkpoint": notes["NEW_SIZE"][0],
    }

    def human(d: dict[str, Any]) -> str:
        lines = [f"consistency {d['old_size']} -> {d['new_size']} "
                 f"({len(d['proof'])} hashes, RFC 9162 order)"]
        lines += d["proof"]
        lines += ["", "old checkpoint:", d["old_checkpoint"].rstrip("\n"),
                  "", "new checkpoint:", d["new_checkpoint"].rstrip("\n")]
        return "\n".join(lines)

    emit(args, data, human)
    return errors.EXIT_OK


# ---------------------------------------------------------------------- deletion, holds
def _control(path: str, *, admin: bool) -> tuple[Callable[..., Any], str]:
    """A caller of the control socket of the mount containing ``path``, and path's name
    in the mount. It sends only to the daemon the mount names (``user.worm.pid``)."""
    loc = locate(path, allow_state_dir=False)
    assert loc.mountpoint is not None
    attr = "user.worm.admin_control" if admin else "user.worm.control"
    try:
        sock = Path(os.getxattr(loc.mountpoint, attr).decode())
    except OSError:
        raise NotAStore(f"{loc.mountpoint}: the daemon publishes no control socket") from None
    p = Path(os.path.abspath(path))
    real = Path(os.path.realpath(p.parent)) / p.name if p != loc.mountpoint else p
    rel = os.path.relpath(real, loc.mountpoint)

    def call(op: str, **kwargs: Any) -> Any:
        return control_call(sock, op, daemon_pid=loc.daemon_pid, **kwargs)

    return call, "/" if rel == "." else "/" + rel


def _parse_date(text: str) -> int:
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"not a date: {text!r} (use YYYY-MM-DD or ISO 8601)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1e9)


def _request_line(r: dict[str, Any]) -> str:
    from worm_fs.core.paths import iso_time

    kind = r.get("kind", "delete")
    what = (f"{r['files']} file(s), frees {_human_bytes(r['bytes_freed'])}" if kind == "delete"
            else f"until {iso_time(r['extra']['until_ns'])}" if kind == "retain"
            else "legal hold")
    return (f"{r['id']}  {kind:<6} {r['state']:<8} {printable(r['path'], field=True)}  by uid "
            f"{r['requester_uid']}  {what}  created {r['created_at']}  "
            f"reason: {printable(r['reason'])}")


def cmd_delete_request(args: argparse.Namespace) -> int:
    call, rel = _control(args.path, admin=False)
    r = call("delete_request", path=rel, reason=args.reason)
    emit(args, r, lambda r: f"{r['id']}\nrequested deletion of {printable(r['path'])}: "
         f"{r['files']} "
         f"file(s), {_human_bytes(r['logical_bytes'])}, would free "
         f"{_human_bytes(r['bytes_freed'])}; another admin must approve it")
    return 0


def cmd_delete_list(args: argparse.Namespace) -> int:
    from worm_fs.control.client import SocketDenied

    # Admins ask on the admin socket, which a flood of the request socket cannot fill;
    # whoever may not connect to it asks on the request socket (and sees only their own
    # requests, whichever socket serves them).
    try:
        call, _ = _control(args.path, admin=True)
        reqs = call("delete_list")
    except SocketDenied:
        call, _ = _control(args.path, admin=False)
        reqs = call("delete_list")
    emit(args, reqs, lambda rs: "\n".join(_request_line(r) for r in rs) or "no requests")
    return 0


def cmd_delete_decide(args: argparse.Namespace) -> int:
    call, _ = _control(args.path, admin=True)
    op = "delete_approve" if args.decision == "approve" else "delete_reject"
    r = call(op, id=args.id, reason=args.reason or "")
    kind = r.get("kind", "delete")
    verb = "rejected" if op == "delete_reject" else \
        {"delete": "approved and deleted", "retain": "approved retention of",
         "hold": "approved a legal hold on"}[kind]
    emit(args, r, lambda r: f"{verb} request {r['id']} ({printable(r['path'])})")
    return 0


def _second_admin(req: dict[str, Any], what: str) -> str:
    return (f"{req['id']}\nrequested {what}; it covers everything below it, so another "
            f"admin must approve it: worm-fs delete approve PATH {req['id']}")


def cmd_hold(args: argparse.Namespace) -> int:
    call, rel = _control(args.path, admin=True)
    if args.action == "set":
        if not args.reason:
            raise UsageError("hold set needs --reason")
        req = call("hold_set", path=rel, reason=args.reason)
        print(_second_admin(req, f"a legal hold on {printable(rel)}") if req else
              f"legal hold set on {printable(rel)}")
    else:
        call("hold_clear", path=rel)
        print(f"legal hold cleared on {printable(rel)}")
    return 0


def cmd_retain(args: argparse.Namespace) -> int:
    call, rel = _control(args.path, admin=True)
    r = call("retain", path=rel, until_ns=_parse_date(args.until), reason=args.reason or "")
    req = r["request"]
    print(_second_admin(req, f"retention of {printable(rel)} until {r['until']}") if req else
          f"{printable(rel)} retained until {r['until']}")
    return 0


def cmd_share(args: argparse.Namespace) -> int:
    try:
        mode = int(args.mode, 8)
    except ValueError:
        raise UsageError(f"--mode must be an octal mode such as 0444, not "
                         f"{args.mode!r}") from None
    if not 0 <= mode <= 0o7777:
        raise UsageError(f"--mode {args.mode} is not a permission mode")
    call, rel = _control(args.path, admin=True)
    r = call("share", path=rel, mode=mode, recursive=args.recursive)
    emit(args, r, lambda r: f"{printable(r['path'])} is now {r['mode']}; "
         f"{r['changed']} of {r['entries']} entr{'y' if r['entries'] == 1 else 'ies'} "
         "changed" + (f", {r['skipped_writing']} still being written skipped"
                      if r["skipped_writing"] else ""))
    return 0


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def _parse_limit(text: str | None, *, sizes: bool) -> int:
    """A limit flag: not given is -2 (keep it), "none" -1 (no limit); sizes take K, M,
    G, T, P suffixes (powers of 1024, an optional "iB" or "B")."""
    if text is None:
        return -2
    if text.lower() == "none":
        return -1
    body = text.strip().upper().removesuffix("IB").removesuffix("B") if sizes else text
    unit = body[-1:] if sizes and body[-1:] in _UNITS else ""
    try:
        value = int(body[: len(body) - len(unit)]) if body else -1
    except ValueError:
        value = -1
    if value < 0:
        what = "a size like 500G or 10T" if sizes else "a whole number"
        raise UsageError(f"not {what}: {text!r} (or 'none')")
    return value * _UNITS[unit]


def cmd_quota_set(args: argparse.Namespace) -> int:
    if args.bytes is None and args.files is None:
        raise UsageError("give --bytes and/or --files (a number, or 'none' to remove)")
    call, rel = _control(args.path, admin=True)
    target = f"uid:{_uid_of(args.uid)}" if args.uid is not None else rel
    q = call("quota_set", target=target, bytes=_parse_limit(args.bytes, sizes=True),
             files=_parse_limit(args.files, sizes=False))
    emit(args, q, _quota_line)
    return 0


def cmd_quota_show(args: argparse.Namespace) -> int:
    call, _ = _control(args.path, admin=True)
    quotas = call("quota_show")
    emit(args, quotas, lambda qs: "\n".join(_quota_line(q) for q in qs) or "no quotas")
    return 0


def _uid_of(user: str) -> int:
    import pwd

    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise UsageError(f"no such user: {user!r}") from None


def _quota_line(q: dict[str, Any]) -> str:
    who = f"uid {q['uid']}" if q["kind"] == "uid" else f"tree {printable(q['path'])}"
    limit_b = "no limit" if q["bytes_limit"] is None else _human_bytes(q["bytes_limit"])
    limit_f = "no limit" if q["files_limit"] is None else str(q["files_limit"])
    return (f"{who}: {_human_bytes(q['bytes_used'])} of {limit_b}, "
            f"{q['files_used']} of {limit_f} files")


def control_call(sock: Path, op: str, *, daemon_pid: int | None, **kwargs: Any) -> Any:
    from worm_fs.control.client import call

    return call(sock, op, daemon_pid=daemon_pid, **kwargs)


# ---------------------------------------------------------------------- provenance
def _wait_sealed(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while os.getxattr(path, "user.worm.state") != b"sealed":
        if time.monotonic() > deadline:
            raise WormError(f"{path} was not sealed within {timeout:.0f} s")
        time.sleep(0.01)


def cmd_seal_env(args: argparse.Namespace) -> int:
    from worm_fs.envinfo import fingerprint

    path = Path(args.path)
    locate(path.parent, allow_state_dir=False)
    if path.exists():
        raise UsageError(f"{path} exists already (a sealed file is never overwritten)")
    data = json.dumps(fingerprint(label=args.label), indent=2, sort_keys=True) + "\n"
    with open(path, "x") as f:
        f.write(data)
    _wait_sealed(path)
    result = {"path": str(path), "sha256": os.getxattr(path, "user.worm.sha256").decode()}
    emit(args, result, lambda r: f"{r['sha256']}  {printable(r['path'])}")
    return 0


def cmd_manifest_create(args: argparse.Namespace) -> int:
    from worm_fs.audit.anchor import load_key
    from worm_fs.manifest import build, scan_sealed_tree, sign

    root = Path(args.path)
    loc = locate(root, allow_state_dir=False)
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory")
    tree = scan_sealed_tree(root, allow_external_links=args.allow_external_links)
    if not tree.files and not tree.links:
        raise UsageError(f"{root} holds no sealed files")
    key = load_key(loc.state_dir)
    note = _checkpoint_now(loc)  # covers every seal made so far
    envelope = sign(build(tree, note, key.name), key)
    text = json.dumps(envelope, indent=2) + "\n"
    for link in tree.links:
        if not link.covered:
            print(f"worm-fs: warning: {printable(link.path)} -> {printable(link.target)} points "
                  "outside the tree: signed as not covered", file=sys.stderr)
    if args.output:
        Path(args.output).write_text(text)
        print(f"signed manifest of {len(tree.files)} file(s) and {len(tree.links)} "
              f"symlink(s) written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_manifest_verify(args: argparse.Namespace) -> int:
    from worm_fs.manifest import (
        ManifestError,
        check_checkpoint,
        compare,
        open_envelope,
        signed_links,
    )

    try:
        envelope = json.loads(Path(args.manifest).read_text())
    except FileNotFoundError:
        raise UsageError(f"{args.manifest}: no such file") from None
    except ValueError:
        raise UsageError(f"{args.manifest} is not JSON") from None
    root = Path(args.dir)
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory")
    if args.pubkey:
        verifier = _verifier(None, args.pubkey)
    else:
        try:
            verifier = _verifier(locate(root, allow_state_dir=False), None)
        except WormError:
            raise UsageError(f"{root} is not in a worm-fs mount: give --pubkey (the output "
                             "of `worm-fs log pubkey` on the store)") from None
    problems: list[str] = []
    try:
        statement = open_envelope(envelope if isinstance(envelope, dict) else {}, verifier)
    except ManifestError as exc:
        print(f"FAILED signature: {printable(exc.message)}")
        return errors.EXIT_CHECK_FAILED
    why = check_checkpoint(statement, verifier)
    if why:
        problems.append(why)
    result = compare(statement, root)
    problems += [f"missing: {printable(p)}" for p in result.missing]
    problems += [f"extra: {printable(p)}" for p in result.extra]
    problems += [f"changed: {printable(p)}" for p in result.changed]
    problems += [f"missing link: {printable(p)}" for p in result.missing_links]
    problems += [f"extra link: {printable(p)} -> {printable(t)}" for p, t in result.extra_links]
    problems += [f"changed link: {printable(k.path)} -> {printable(t)} "
                 f"(signed: {printable(k.target)})" for k, t in result.retargeted]
    problems += [f"changed: {printable(p)} (signed as a file, now a link -> {printable(t)})"
                 for p, t in result.now_links]
    problems += [f"changed: {printable(k.path)} (signed as a link -> {printable(k.target)}, now a "
                 "file)" for k in result.now_files]
    warnings = [f"link {printable(k.path)} -> {printable(k.target)} points outside the tree: its "
                "target's content is not covered by the manifest" for k in result.not_covered]
    data = {"ok": not problems, "files": len(statement["subject"]), "checked": result.checked,
            "links": len(signed_links(statement)), "links_checked": result.links_checked,
            "problems": problems, "warnings": warnings}
    links = (f" and {result.links_checked} of {data['links']} symlink(s)" if data["links"]
             else "")
    emit(args, data, lambda d: "\n".join(
        [f"WARNING {w}" for w in d["warnings"]] +
        [f"FAILED {p}" for p in d["problems"]] +
        [f"{d['checked']} of {d['files']} file(s){links} match the signed manifest"
         if d["ok"] else f"manifest verification FAILED ({len(d['problems'])} problem(s))"]))
    return errors.EXIT_OK if not problems else errors.EXIT_CHECK_FAILED


# ---------------------------------------------------------------------- parser
def _seq(text: str) -> int:
    """A record sequence number: a whole number from 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a record number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("record numbers start at 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worm-fs",
        description="A write-once filesystem for ML artifacts: files are sealed when their "
        "writer closes them, and every attempt is recorded in a tamper-evident audit log.",
        epilog="Exit codes: 0 ok, 1 check failed, 2 usage/not found (also: an unsafe "
        "runtime directory, a control socket not served by the mount's daemon), 3 refused, "
        "4 store busy, 5 storage error, 70 internal error.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("mount", help="mount a store (creating it on first use)",
                       description="Mount the store in STATE_DIR at MOUNTPOINT. Returns once "
                       "the mount is ready; the daemon logs to STATE_DIR/daemon.log. Settings "
                       "may come from a TOML file (--config); flags override it.")
    p.add_argument("state_dir", metavar="STATE_DIR", nargs="?",
                   help="where the store lives (mode 0700)")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?", help="an empty directory")
    p.add_argument("--config", metavar="FILE", help="TOML file with any of the settings "
                   "below (names with underscores) and state_dir, mountpoint")
    p.add_argument("--foreground", action="store_true", help="serve in this process")
    add_mount_flags(p)
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    p.add_argument("--debug-fuse", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", help="unmount cleanly", description="Stop the daemon "
                       "serving MOUNTPOINT and unmount it.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.set_defaults(func=cmd_umount)

    p = sub.add_parser("stat", help="state, size and digest of one entry",
                       description="Show an entry's state (writing, sealed, quarantined), "
                       "size, SHA-256 and seal time.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_stat)

    p = sub.add_parser("stats", help="store-wide counts and dedup ratio",
                       description="Files, logical bytes, stored bytes, chunks, dedup ratio. "
                       "PATH: the mountpoint, a path inside it, or a state directory.")
    p.add_argument("path", metavar="PATH")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON")
    out.add_argument("--prometheus", action="store_true",
                     help="print Prometheus metrics (for node_exporter's textfile collector)")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("verify", help="scrub: re-hash every chunk and file",
                       description="Re-hash every stored chunk and every sealed file, check "
                       "each sealed file's layout; exit 1 and name the files on any "
                       "corruption. With --bucket, check a bucket alone instead (no store "
                       "needed): the signed checkpoint against --pubkey, the log tiles "
                       "against it, and every sealed file's objects: present, locked, "
                       "matching their digests; exit 1 naming each bad object.")
    p.add_argument("path", metavar="PATH", nargs="?", help="a mount or state directory")
    p.add_argument("--bucket", metavar="URL", help="s3://BUCKET[/PREFIX] to check instead")
    p.add_argument("--s3-endpoint", metavar="URL", help="the S3 endpoint (with --bucket)")
    p.add_argument("--checkpoint", action="append", metavar="FILE",
                   help="with --bucket: a checkpoint kept elsewhere that the bucket's log "
                        "must extend (repeatable); every checkpoints/<size> in the bucket "
                        "is checked against the newest one either way")
    p.add_argument("--pubkey", metavar="KEY|FILE",
                   help="the store's verifier key (needed with --bucket)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("restore", help="rebuild a store from its bucket",
                       description="Rebuild a store in the empty STATE_DIR from the bucket "
                       "alone, after checking everything against --pubkey (the checkpoint's "
                       "signature, the log's root, every file's layout, chunks and SHA-256); "
                       "any finding refuses it and writes nothing (exit 1). Then mount "
                       "STATE_DIR as usual. The signing key is not in the bucket: give the "
                       "store's audit-signing.key from a backup with --signing-key, or the "
                       "store gets a new key at its first mount.")
    p.add_argument("bucket", metavar="URL", help="s3://BUCKET[/PREFIX]")
    p.add_argument("state_dir", metavar="STATE_DIR")
    p.add_argument("--s3-endpoint", metavar="URL", help="the S3 endpoint")
    p.add_argument("--pubkey", metavar="KEY|FILE", help="the store's verifier key")
    p.add_argument("--signing-key", metavar="FILE",
                   help="the store's audit-signing.key, kept elsewhere")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_restore)

    logp = sub.add_parser("log", help="read, verify and anchor the audit log",
                          description="The audit log: an RFC 9162 Merkle tree over every "
                          "record, with Ed25519-signed checkpoints.")
    logsub = logp.add_subparsers(dest="log_command", metavar="ACTION", required=True)

    p = logsub.add_parser("show", help="print records", description="Print audit records, "
                          "one line each, or JSON Lines (with leaf_hash). In lines, control "
                          "and invisible characters in names are escaped (\\n, \\x1b, "
                          "\\u202e), a backslash is \\\\, and a space in a path or process "
                          "name is \\x20.")
    p.add_argument("path", metavar="PATH")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="JSON Lines")
    form.add_argument("--raw", action="store_true",
                      help="each record's canonical bytes, exactly as hashed into its "
                      "leaf (SHA-256(0x00 || line)), one per line: ASCII JSON never "
                      "contains a newline")
    p.add_argument("--since", type=_seq, default=0, metavar="SEQ", help="start at SEQ")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new records")
    p.set_defaults(func=cmd_log_show)

    p = logsub.add_parser("verify", help="verify the whole log",
                          description="Recompute every leaf and the root, check sequence "
                          "continuity and every stored checkpoint; with --checkpoint, prove "
                          "consistency with checkpoints kept elsewhere; with --witness, "
                          "require witness cosignatures. Exit 0 intact, 1 tampered or "
                          "not witnessed, 2 usage or no such store.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--checkpoint", action="append", metavar="FILE",
                   help="a signed checkpoint kept outside the host (repeatable)")
    p.add_argument("--pubkey", metavar="KEY|FILE",
                   help="verifier key kept outside the host (default: the store's own)")
    p.add_argument("--witness", action="extend", nargs="+", metavar="VKEY",
                   help="also require cosignatures (cosignature/v1) by these witness "
                   "verifier keys: some stored checkpoint must carry valid ones from "
                   "--quorum of them, and no cosignature of theirs may fail to verify; "
                   "else exit 1")
    p.add_argument("--quorum", type=int, metavar="N",
                   help="how many of the --witness keys must cosign (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_log_verify)

    p = logsub.add_parser("checkpoint", help="sign and print a checkpoint now",
                          description="Sign the current tree head (C2SP tlog-checkpoint) and "
                          "print it. Copy it off the host to anchor the log.")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func=cmd_log_checkpoint)

    p = logsub.add_parser("pubkey", help="print the verifier key",
                          description="Print the note verifier key "
                          "(<name>+<hash>+<base64 key>).")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func=cmd_log_pubkey)

    p = logsub.add_parser("prove", help="inclusion proof for one record",
                          description="Print an RFC 9162 inclusion proof of record SEQ "
                          "against a signed checkpoint, as JSON.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("seq", type=_seq, metavar="SEQ")
    p.set_defaults(func=cmd_log_prove)

    p = logsub.add_parser("consistency", help="consistency proof between two checkpoints",
                          description="Print the RFC 9162 consistency proof (the order "
                          "tlog.CheckTree expects) from the signed checkpoint of OLD_SIZE "
                          "records to the one of NEW_SIZE, and both checkpoints. Both must "
                          "be stored checkpoints of exactly those sizes; NEW_SIZE left out "
                          "means the whole log, signing a checkpoint of it if none is "
                          "stored. Exit 0 printed, 1 a stored checkpoint fails its "
                          "signature, 2 OLD_SIZE > NEW_SIZE, a size beyond the log or with "
                          "no stored checkpoint.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("old_size", type=_seq, metavar="OLD_SIZE")
    p.add_argument("new_size", type=_seq, nargs="?", metavar="NEW_SIZE")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_log_consistency)

    delp = sub.add_parser("delete", help="the two-person deletion procedure",
                          description="Nothing is deleted through the mount. A user requests "
                          "a deletion; an admin who is not the requester approves (or "
                          "rejects) it; legal holds and retention block approval. "
                          "Requests for retention or a legal hold on a directory (from "
                          "'worm-fs retain' and 'worm-fs hold set') are listed, approved "
                          "and rejected here too.")
    delsub = delp.add_subparsers(dest="delete_command", metavar="ACTION", required=True)
    p = delsub.add_parser("request", help="ask for PATH (a file or a whole directory) to go",
                          description="Request deletion of PATH; prints the request id.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--reason", required=True, help="why (recorded in the audit log)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_delete_request)
    p = delsub.add_parser("list", help="requests and their states",
                          description="List requests (deletions, and retention or holds "
                          "on directories): pending, approved, rejected, expired.")
    p.add_argument("path", metavar="PATH", help="the mountpoint or any path in it")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_delete_list)
    for decision in ("approve", "reject"):
        p = delsub.add_parser(decision, help=f"{decision} a request (admins)",
                              description=f"{decision.capitalize()} request ID. The approver "
                              "must be an admin and not the requester.")
        p.add_argument("path", metavar="PATH", help="the mountpoint or any path in it")
        p.add_argument("id", metavar="ID")
        p.add_argument("--reason", required=decision == "reject", help="recorded in the log")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=cmd_delete_decide, decision=decision)

    p = sub.add_parser("seal-env", help="seal a description of this environment",
                       description="Write a JSON fingerprint of the current environment "
                       "(Python and package versions, host, hardware, git commit of the "
                       "working directory) to PATH inside a mount; it is sealed like any "
                       "file, next to the run's outputs.")
    p.add_argument("path", metavar="PATH", help="a new file name inside a worm-fs mount")
    p.add_argument("--label", help="free text stored with it (e.g. the run name)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_seal_env)

    manp = sub.add_parser("manifest", help="signed manifests of sealed trees",
                          description="A deployment gate: sign what training sealed, verify it "
                          "before serving, on any host.")
    mansub = manp.add_subparsers(dest="manifest_command", metavar="ACTION", required=True)
    p = mansub.add_parser("create", help="sign a manifest of a sealed tree",
                          description="Write a DSSE-signed in-toto statement listing every file "
                          "below PATH (path, size, SHA-256, seal time and seq) and every "
                          "symlink (path, target) with a checkpoint covering the seals. "
                          "Refuses unsealed files, and symlinks whose target leaves PATH "
                          "(absolute, or above PATH after following the tree's own links) "
                          "unless --allow-external-links. Needs the store's key (root). "
                          "Exit 0 when written, 2 when refused or on usage errors.")
    p.add_argument("path", metavar="PATH", help="a directory in a worm-fs mount")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    p.add_argument("--allow-external-links", action="store_true",
                   help="sign symlinks that point outside PATH, marked as not covered: "
                   "their target strings are checked, what they point at is not")
    p.set_defaults(func=cmd_manifest_create)
    p = mansub.add_parser("verify", help="check a directory against a manifest",
                          description="Check DIR (the mount or a copy anywhere) against "
                          "MANIFEST: signature, missing, extra and changed files and "
                          "symlinks (a link by its target string; one signed as pointing "
                          "outside the tree gets a warning, its target's content is not "
                          "covered). Exit 0 if all match, 1 otherwise, 2 on usage errors.")
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--pubkey", metavar="KEY|FILE",
                   help="the store's verifier key (needed outside a mount)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_manifest_verify)

    p = sub.add_parser("hold", help="set or clear a legal hold (admins)",
                       description="A legal hold on PATH (and everything below it) blocks "
                       "the approval of any deletion covering it, and renames. On a file "
                       "it applies at once; on a directory it is a request that another "
                       "admin approves with 'worm-fs delete approve ID'. Clearing needs "
                       "one admin.")
    p.add_argument("action", choices=("set", "clear"))
    p.add_argument("path", metavar="PATH")
    p.add_argument("--reason", help="required for set")
    p.set_defaults(func=cmd_hold)

    p = sub.add_parser("retain", help="extend retention (admins)",
                       description="Retain PATH (and everything below it) until DATE. "
                       "Retention can be extended, never shortened, and never beyond the "
                       "mount's --max-retention (default 100 years) from now. On a file it "
                       "applies at once; on a directory it is a request that another admin "
                       "approves with 'worm-fs delete approve ID'.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--until", required=True, metavar="DATE", help="YYYY-MM-DD or ISO 8601")
    p.add_argument("--reason", help="recorded with a request for a directory")
    p.set_defaults(func=cmd_retain)

    p = sub.add_parser("share", help="add read access to sealed entries (admins)",
                       description="Add read bits to PATH (a directory gets the matching "
                       "search bits too; with --recursive, everything below it as well). "
                       "Only read and search bits are ever added, none is ever removed; a "
                       "MODE with any other bit (a write bit, setuid, ...) is refused "
                       "(exit 3) and the refusal recorded. Each change is recorded in the "
                       "audit log (op share, old and new mode, who): 'worm-fs log show'. "
                       "Files still being written are skipped (alone: refused, exit 3).")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--mode", required=True, metavar="MODE",
                   help="octal read (and search) bits to add, e.g. 0444 or 0040")
    p.add_argument("--recursive", action="store_true", help="everything below PATH too")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_share)

    replp = sub.add_parser("replication", help="the upload of a store to its bucket, or "
                           "what a replica follows",
                           description="How far the bucket is behind the store.")
    replsub = replp.add_subparsers(dest="replication_command", metavar="ACTION",
                                   required=True)
    p = replsub.add_parser("status", help="pending and uploaded objects, lag, last error",
                           description="bucket, pending_objects, pending_bytes, lag_seconds "
                           "(age of the oldest of the first 100,000 pending names), "
                           "uploaded_objects (queue names done), uploaded_bytes, "
                           "log_uploaded_size (records in the bucket's newest checkpoint), "
                           "last_error; read from the store (the daemon need not run). "
                           "On a replica (mount --replica): the primary's checkpoint it "
                           "follows, records and seconds behind, cache size and hit rate, "
                           "and what it refused (exit 1 while it refuses the bucket's log "
                           "or a file, or after it found a replaced object). "
                           "Exit 2 if the store does not replicate.")
    p.add_argument("path", metavar="PATH", help="the mount, or its state directory")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_replication_status)

    quotap = sub.add_parser("quota", help="bytes and files per uid or directory tree (admins)",
                            description="Quotas count what users wrote: the size of every "
                            "sealed, quarantined and in-progress file, in full even where "
                            "deduplication shares its chunks. A create past a files limit, "
                            "and a write or extending truncate past a bytes limit, fail with "
                            "EDQUOT. Only an approved deletion gives usage back.")
    quotasub = quotap.add_subparsers(dest="quota_command", metavar="ACTION", required=True)
    p = quotasub.add_parser("set", help="set or remove a quota",
                            description="Without --uid: a quota on the directory tree PATH "
                            "(entries cannot then be renamed into or out of it: EXDEV). "
                            "With --uid: a quota on everything that user creates in the "
                            "mount containing PATH. 'none' removes a limit.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--uid", metavar="USER", help="a user name or uid")
    p.add_argument("--bytes", metavar="SIZE", help="e.g. 500G, 10T, or none")
    p.add_argument("--files", metavar="N", help="a number of files, or none")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_quota_set)
    p = quotasub.add_parser("show", help="quotas and usage",
                            description="Every quota with its usage, and every uid's usage.")
    p.add_argument("path", metavar="PATH", help="the mount, or any path in it")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_quota_show)
    return parser


class JournalFormatter(logging.Formatter):
    """``<priority>`` prefixes that journald turns into log levels (sd-daemon(3))."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        priority = self.PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):  # stderr goes to the journal: it adds the time
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s worm-fs[%(process)d] %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except WormError as exc:
        print(f"worm-fs: {printable(exc.message)}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        return 0
    except OSError as exc:  # a path the user gave that the system refuses
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"worm-fs: {printable(f'{where}{exc.strerror or exc}')}", file=sys.stderr)
        return errors.EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
