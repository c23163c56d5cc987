"""The bucket: the only module that imports ``boto3``.

Credentials come the way every S3 tool takes them (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SHARED_CREDENTIALS_FILE``/``AWS_PROFILE``), never from
the command line. Every object is written with Object Lock retention when a lock mode
is set; the bucket, not worm-fs, then refuses to delete or shorten it. A client is
safe to share between threads (boto3 clients are).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from worm_fs.errors import EXIT_STORAGE, UsageError, WormError


class BucketError(WormError):
    """The bucket refused or could not be reached."""

    exit_code = EXIT_STORAGE


@dataclass(frozen=True)
class BucketUrl:
    bucket: str
    prefix: str  # "" or "some/prefix/" (with the slash)

    @classmethod
    def parse(cls, url: str) -> BucketUrl:
        if not url.startswith("s3://") or len(url) <= 5:
            raise UsageError(f"not a bucket URL: {url!r} (use s3://BUCKET[/PREFIX])")
        bucket, _, prefix = url[5:].partition("/")
        if not bucket:
            raise UsageError(f"no bucket in {url!r}")
        prefix = prefix.strip("/")
        return cls(bucket, prefix + "/" if prefix else "")

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class Stored:
    """What the bucket says about one object."""

    size: int
    version_id: str | None
    lock_mode: str | None
    retain_until: dt.datetime | None


class Bucket:
    """One bucket and prefix, with the lock every upload gets."""

    def __init__(self, url: BucketUrl, *, endpoint: str | None = None,
                 lock_mode: str | None = "COMPLIANCE", retention_days: float = 0.0,
                 timeout_s: float = 10.0) -> None:
        self.url = url
        self.endpoint = endpoint
        self.lock_mode = lock_mode.upper() if lock_mode else None
        self.retention_days = retention_days
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint,
            config=Config(connect_timeout=timeout_s, read_timeout=timeout_s,
                          retries={"max_attempts": 2, "mode": "standard"},
                          max_pool_connections=32, s3={"addressing_style": "path"}),
        )

    def key(self, name: str) -> str:
        return self.url.prefix + name

    def put(self, name: str, data: bytes) -> str | None:
        """Write ``name`` (locked until now + the retention); returns its version id."""
        args: dict[str, Any] = {"Bucket": self.url.bucket, "Key": self.key(name), "Body": data}
        if self.lock_mode and self.retention_days > 0:
            args["ObjectLockMode"] = self.lock_mode
            args["ObjectLockRetainUntilDate"] = dt.datetime.now(dt.UTC) + dt.timedelta(
                days=self.retention_days)
        reply = self._call("put", name, self.client.put_object, **args)
        return reply.get("VersionId")

    def get(self, name: str, version_id: str | None = None) -> bytes | None:
        """The bytes of ``name`` (the newest version, or ``version_id``), None if absent."""
        args: dict[str, Any] = {"Bucket": self.url.bucket, "Key": self.key(name)}
        if version_id:
            args["VersionId"] = version_id
        try:
            reply = self.client.get_object(**args)
            return reply["Body"].read()
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404", "NoSuchVersion"):
                return None
            raise BucketError(f"get {name}: {_message(exc)}") from None
        except BotoCoreError as exc:
            raise BucketError(f"get {name}: {exc}") from None

    def head(self, name: str) -> Stored | None:
        try:
            reply = self.client.head_object(Bucket=self.url.bucket, Key=self.key(name))
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise BucketError(f"head {name}: {_message(exc)}") from None
        except BotoCoreError as exc:
            raise BucketError(f"head {name}: {exc}") from None
        return Stored(int(reply.get("ContentLength", 0)), reply.get("VersionId"),
                      reply.get("ObjectLockMode"), reply.get("ObjectLockRetainUntilDate"))

    def names(self, under: str = "") -> list[str]:
        """Every object name below ``under`` (relative to the prefix)."""
        out: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.url.bucket, Prefix=self.key(under)):
                out += [item["Key"][len(self.url.prefix):] for item in page.get("Contents", [])]
        except (ClientError, BotoCoreError) as exc:
            raise BucketError(f"list {under or '/'}: {_message(exc)}") from None
        return out

    def _call(self, what: str, name: str, fn: Any, **args: Any) -> Any:
        try:
            return fn(**args)
        except ClientError as exc:
            raise BucketError(f"{what} {name}: {_message(exc)}") from None
        except BotoCoreError as exc:
            raise BucketError(f"{what} {name}: {exc}") from None


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _message(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', '?')}: {err.get('Message', '') or exc}"
    return str(exc)
