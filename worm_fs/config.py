"""Mount settings: one table for the command-line flags and the TOML config file.

``worm-fs mount --config FILE`` reads a TOML file whose keys are the names below (flags
with dashes turned into underscores, plus ``state_dir`` and ``mountpoint``). A flag given
on the command line overrides the file; the file overrides the defaults. Unknown keys
and wrongly typed values are errors, so a typo never silently weakens a setting.
"""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worm_fs.errors import UsageError


@dataclass(frozen=True)
class Setting:
    name: str
    type: type
    default: Any
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None


MOUNT_SETTINGS: tuple[Setting, ...] = (
    Setting("settle", float, 60.0, "how long a new entry stays renamable by its creator "
            "(0 = never; default 60)", "SECONDS"),
    Setting("settle_limit", float, 86_400.0, "an entry's settle window closes at the latest "
            "this long after its creation, however active it stays (default 86400)",
            "SECONDS"),
    Setting("allow_other", bool, False, "let users other than the mounter use the mount"),
    Setting("audit_reads", str, "handle", "one read record per open handle (default) or "
            "per read call", choices=("handle", "each")),
    Setting("admin_group", str, None, "members of GROUP (name or gid) may approve "
            "deletions, set holds and extend retention; root always may", "GROUP"),
    Setting("seal_read_mode", str, None, "read bits (octal, e.g. 0444 or 0440) added to "
            "every file at its seal, and with the matching search bits to every directory "
            "at its mkdir; never write bits (default: none, the writer's mode stands)",
            "MODE"),
    Setting("seal_group", str, None, "sealed files and new directories belong to GROUP "
            "(name or gid; default: the creator's group)", "GROUP"),
    Setting("retention", float, 0.0, "keep every sealed file at least DAYS after its seal "
            "(default 0)", "DAYS"),
    Setting("max_retention", float, 36_525.0, "no retention may end more than DAYS from "
            "now (default 36525: 100 years)", "DAYS"),
    Setting("request_ttl", float, 7.0, "deletion requests expire after DAYS (default 7)",
            "DAYS"),
    Setting("checkpoint_records", int, 10_000, "sign a checkpoint after N new records "
            "(default 10000)", "N"),
    Setting("checkpoint_seconds", float, 300.0, "or after T seconds with new records "
            "(default 300)", "T"),
    Setting("log_origin", str, None, "the origin (and key name) of the log's checkpoints, "
            "fixed when the store is first mounted; C2SP recommends a schema-less URL, e.g. "
            "models.example.com/worm (default worm-fs/STORE_ID); another origin on a later "
            "mount exits 2", "ORIGIN"),
    Setting("runtime_dir", str, None, "where the control sockets go (default "
            "/run/worm-fs/STORE_ID); it and its parents must be root's or the daemon's "
            "and not writable by group or others (sticky parents allowed), else exit 2",
            "DIR"),
    Setting("open_rate_limit", float, 0.0, "refuse opens with EAGAIN past OPENS per second "
            "per uid (bursts up to one second's worth; root exempt; the refusals are "
            "recorded summed, about once a second per uid); default 0: no limit", "OPENS"),
    Setting("bucket", str, None, "replicate the store to this S3 bucket with Object Lock "
            "(s3://BUCKET[/PREFIX]; credentials from AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY or AWS_SHARED_CREDENTIALS_FILE/AWS_PROFILE)", "URL"),
    Setting("s3_endpoint", str, None, "the S3 endpoint (default: AWS's)", "URL"),
    Setting("object_lock", str, "compliance", "the Object Lock mode of every uploaded "
            "object (default compliance)", choices=("compliance", "governance")),
    Setting("object_retention", float, 30.0, "keep every uploaded object locked DAYS "
            "(default 30)", "DAYS"),
    Setting("replicate", str, "async", "async: uploads never slow writers (default); "
            "sync: a writer's close() and every fsync() return only once the bucket holds "
            "the file's bytes so far and the audit log up to that commit (an fsync of a "
            "file through another handle, e.g. sync FILE, also its seal); an unreachable "
            "bucket then holds them", choices=("async", "sync")),
    Setting("replica", str, None, "mount a read-only replica of the primary that "
            "replicates to this bucket (s3://BUCKET[/PREFIX]; needs --pubkey); STATE_DIR "
            "then holds the replica's own store and chunk cache", "URL"),
    Setting("pubkey", str, None, "a replica's pin: the primary's verifier key (worm-fs log "
            "pubkey on the primary); nothing the bucket holds is served unless this key "
            "signed it", "KEY"),
    Setting("cache_size", float, 8.0, "a replica's chunk cache bound in GiB (default 8; "
            "least recently used chunks are evicted)", "GIB"),
    Setting("poll", float, 5.0, "how often a replica looks for a new checkpoint in the "
            "bucket, in seconds (default 5)", "SECONDS"),
    Setting("witness", list, None, "ask the witness at URL (C2SP tlog-witness) to cosign "
            "each new checkpoint; VKEY is its cosignature/v1 verifier key (repeatable; in "
            "--config a list of strings)", "URL=VKEY"),
    Setting("read_ahead_kib", int, 4096, "kernel read-ahead of the mount in KiB "
            "(default 4096)", "KIB"),
)
PATHS = ("state_dir", "mountpoint")


def add_mount_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, defaulting to None so that 'not given' can be told apart."""
    for s in MOUNT_SETTINGS:
        flag = "--" + s.name.replace("_", "-")
        if s.type is bool:
            parser.add_argument(flag, action="store_true", default=None, help=s.help)
        elif s.type is list:
            parser.add_argument(flag, action="append", default=None, metavar=s.metavar,
                                help=s.help)
        else:
            parser.add_argument(flag, type=s.type, default=None, metavar=s.metavar,
                                choices=s.choices, help=s.help)


def load_config(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path}: {exc}") from None
    known = {s.name: s for s in MOUNT_SETTINGS}
    unknown = sorted(set(data) - set(known) - set(PATHS))
    if unknown:
        raise UsageError(f"config file {path}: unknown setting(s): {', '.join(unknown)}")
    for key, value in data.items():
        want = str if key in PATHS else known[key].type
        ok = isinstance(value, want) or (want is float and isinstance(value, int)
                                         and not isinstance(value, bool))
        if want is list and ok and not all(isinstance(v, str) for v in value):
            raise UsageError(f"config file {path}: {key} must be a list of strings")
        if not ok or (want is int and isinstance(value, bool)):
            raise UsageError(f"config file {path}: {key} must be {want.__name__}")
        if key in known and known[key].choices and value not in known[key].choices:
            raise UsageError(f"config file {path}: {key} must be one of "
                             f"{', '.join(known[key].choices)}")
    return data


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill every mount setting in ``args``: flag, else config file, else default."""
    config = load_config(Path(args.config)) if getattr(args, "config", None) else {}
    for s in MOUNT_SETTINGS:
        if getattr(args, s.name) is None:
            value = config.get(s.name, s.default)
            setattr(args, s.name, float(value) if s.type is float and value is not None
                    else value)
    for name in PATHS:
        if getattr(args, name) is None:
            if name not in config:
                raise UsageError(f"{name.upper()} is missing (give it, or set {name} in "
                                 "--config)")
            setattr(args, name, config[name])
    return args


def as_flags(args: argparse.Namespace) -> list[str]:
    """The resolved settings as command-line flags (for the background daemon)."""
    flags: list[str] = []
    for s in MOUNT_SETTINGS:
        value = getattr(args, s.name)
        flag = "--" + s.name.replace("_", "-")
        if s.type is bool:
            flags += [flag] if value else []
        elif s.type is list:
            for item in value or ():
                flags += [flag, str(item)]
        elif value is not None:
            flags += [flag, str(value)]
    return flags
