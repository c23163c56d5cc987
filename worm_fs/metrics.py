"""Store metrics in the Prometheus text exposition format.

For node_exporter's textfile collector: ``worm-fs stats PATH --prometheus >
/var/lib/node_exporter/textfile/worm-fs.prom`` (atomically: write a temp file, rename).
Refusals are counters by operation: they are what an alert fires on.
"""

from __future__ import annotations

import time
from typing import Any

from worm_fs.audit.anchor import CHECKPOINT_TIME_KEY
from worm_fs.audit.log import REFUSALS_PREFIX, usage_stats
from worm_fs.audit.witness import witness_status
from worm_fs.core.clock import trusted_now
from worm_fs.core.deletion import DeletionRequest
from worm_fs.core.fs import store_stats
from worm_fs.replication.follower import read_status
from worm_fs.replication.uploader import queue_status
from worm_fs.store import Store, from_u64, uploads

Sample = tuple[str, str, str, list[tuple[dict[str, str], float]]]


def collect(store: Store) -> list[Sample]:
    """(name, type, help, [(labels, value)]) for every metric."""
    stats: dict[str, Any] = store_stats(store)
    with store.read() as rt:
        store_id = (rt.get_meta("store_id") or b"").decode()
        refusals = [(key[len(REFUSALS_PREFIX):], from_u64(value))
                    for key, value in rt.iter_meta(REFUSALS_PREFIX)]
        now = trusted_now(rt, time.time_ns())
        pending = sum(1 for _, raw in rt.iter_deletions()
                      if DeletionRequest.from_bytes(raw).shown_state(now) == "pending")
        checkpoint_ns = rt.get_counter(CHECKPOINT_TIME_KEY)
        usage = usage_stats(rt)
        witnesses = witness_status(rt, time.time_ns())
    base = {"store": store_id}

    def one(value: float) -> list[tuple[dict[str, str], float]]:
        return [(base, value)]

    def by_uid(usage: dict[str, Any], what: str) -> list[tuple[dict[str, str], float]]:
        return [(dict(base, uid=uid), u[what]) for uid, u in usage["audit_by_uid"].items()
                if what != "throttled" or u[what]] or one(0)

    samples: list[Sample] = [
        ("worm_fs_sealed_files", "gauge", "Sealed files.", one(stats["files"])),
        ("worm_fs_sealed_bytes", "gauge", "Logical bytes of sealed files.",
         one(stats["logical_bytes"])),
        ("worm_fs_stored_bytes", "gauge", "Bytes of distinct stored chunks.",
         one(stats["stored_bytes"])),
        ("worm_fs_dedup_ratio", "gauge", "Logical bytes per stored byte.",
         one(stats["dedup_ratio"])),
        ("worm_fs_quarantined_files", "gauge", "Files quarantined by crash recovery.",
         one(stats["quarantined"])),
        ("worm_fs_writing_files", "gauge", "Files being written.", one(stats["writing"])),
        ("worm_fs_refusals_total", "counter", "Refused attempts by operation.",
         [(dict(base, op=op), count) for op, count in sorted(refusals)] or one(0)),
        ("worm_fs_deletion_requests_pending", "gauge", "Deletion requests awaiting a decision.",
         one(pending)),
        ("worm_fs_freed_bytes_total", "counter", "Bytes freed by approved deletions.",
         one(stats["freed_bytes"])),
        ("worm_fs_audit_records", "gauge", "Records in the audit log.",
         one(stats["audit_records"])),
        ("worm_fs_audit_stored_bytes_total", "counter",
         "Stored bytes of audit records (since per-uid counting began).",
         one(usage["audit_stored_bytes"])),
        ("worm_fs_audit_records_by_uid_total", "counter",
         "Audit records by the uid they name (none: the daemon's own; other: uids past "
         "the tracked limit).", by_uid(usage, "records")),
        ("worm_fs_audit_bytes_by_uid_total", "counter",
         "Stored bytes of audit records by the uid they name.", by_uid(usage, "bytes")),
        ("worm_fs_opens_throttled_total", "counter",
         "Opens refused by the open rate limit, by uid.", by_uid(usage, "throttled")),
        ("worm_fs_commits_total", "counter", "Synced store commits (group commits).",
         one(stats["commits"])),
        ("worm_fs_commit_changes_total", "counter", "State changes committed.",
         one(stats["commit_changes"])),
        ("worm_fs_commit_flushes_total", "counter", "File flushes (closes) committed.",
         one(stats["commit_flushes"])),
        ("worm_fs_commit_records_total", "counter", "Audit records written by commits.",
         one(stats["commit_records"])),
        ("worm_fs_commits_shared_total", "counter",
         "Commits that held the flushes of two or more files.", one(stats["commits_shared"])),
    ]
    for what, unit in (("bytes", "Bytes"), ("files", "Files")):
        labelled = [(dict(base, **_quota_labels(q)), q) for q in stats["quotas"]]
        samples.append((f"worm_fs_quota_used_{what}", "gauge",
                        f"{unit} of sealed and quarantined files, by creator uid and by "
                        "directory tree with a quota.",
                        [(labels, q[f"{what}_used"]) for labels, q in labelled]))
        samples.append((f"worm_fs_quota_limit_{what}", "gauge", f"{unit} quota limits.",
                        [(labels, q[f"{what}_limit"]) for labels, q in labelled
                         if q[f"{what}_limit"] is not None]))
    with store.read() as rt:
        replication = queue_status(rt, time.time_ns()) if rt.get_meta(uploads.BUCKET_META) else None
    if replication is not None:
        labels = dict(base, bucket=str(replication["bucket"]))
        for name, kind, help_text in (
            ("pending_objects", "gauge", "Objects queued for the bucket."),
            ("pending_bytes", "gauge", "Bytes queued for the bucket."),
            ("lag_seconds", "gauge", "Age of the oldest object queued for the bucket."),
            ("uploaded_objects", "counter", "Objects uploaded to the bucket."),
            ("uploaded_bytes", "counter", "Bytes uploaded to the bucket."),
            ("log_uploaded_size", "gauge", "Audit records in the bucket's newest checkpoint."),
        ):
            samples.append((f"worm_fs_replication_{name}", kind, help_text,
                            [(labels, replication[name])]))
        samples.append(("worm_fs_replication_failing", "gauge",
                        "1 while the last upload attempt failed.",
                        [(labels, 1 if replication["last_error"] else 0)]))
    for name, kind, help_text in (
        ("cosigned_size", "gauge", "Tree size of the newest checkpoint the witness cosigned."),
        ("lag_records", "gauge", "Records the witness's cosignature lags the newest "
         "checkpoint."),
        ("lag_seconds", "gauge", "Seconds since the witness was last in step (0 when it is)."),
        ("errors", "counter", "Failed attempts to get the witness's cosignature."),
    ):
        samples.append((f"worm_fs_witness_{name}" + ("_total" if kind == "counter" else ""),
                        kind, help_text,
                        [(dict(base, witness=w["witness"]), w[name]) for w in witnesses]))
    if witnesses:
        samples.append(("worm_fs_witness_failing", "gauge",
                        "1 while the last attempt to reach the witness failed.",
                        [(dict(base, witness=w["witness"]), 1 if w["failing"] else 0)
                         for w in witnesses]))
    samples += _replica_samples(store, base)
    if checkpoint_ns:
        samples.append(("worm_fs_audit_checkpoint_age_seconds", "gauge",
                        "Seconds since the newest signed checkpoint.",
                        one(round(max(0, time.time_ns() - checkpoint_ns) / 1e9, 3))))
    return samples


def _replica_samples(store: Store, base: dict[str, str]) -> list[Sample]:
    """A replica's view of the primary it follows and of its cache."""
    status = read_status(store.path)
    if status is None:
        return []
    labels = dict(base, bucket=str(status["bucket"]))
    out: list[Sample] = []
    for name, kind, help_text, value in (
        ("followed_size", "gauge", "Tree size of the primary's newest verified checkpoint.",
         status["followed_size"]),
        ("behind_records", "gauge", "Records in the bucket's checkpoint not applied yet.",
         status["behind_records"]),
        ("behind_seconds", "gauge", "Seconds a newer checkpoint has waited to be applied.",
         status["behind_seconds"]),
        ("refused", "gauge", "1 while the replica refuses the bucket's log or a file.",
         1 if status["refused"] else 0),
        ("refusals_total", "counter", "Polls and reads refused by the replica's checks.",
         status["refusals"]),
        ("replaced_objects_total", "counter", "Objects whose newest version failed its "
         "check, served from an older version that passed.",
         status.get("replaced_objects", 0)),
        ("failing", "gauge", "1 while the last poll of the bucket failed.",
         1 if status["last_error"] else 0),
        ("status_age_seconds", "gauge", "Seconds since the replica last wrote its status.",
         status["age_seconds"]),
        ("cache_bytes", "gauge", "Bytes of chunks in the replica's cache.",
         status.get("cache_bytes", 0)),
        ("cache_limit_bytes", "gauge", "The cache bound (--cache-size).",
         status.get("cache_limit", 0)),
        ("cache_hits_total", "counter", "Chunk reads the cache answered.",
         status.get("cache_hits", 0)),
        ("cache_misses_total", "counter", "Chunk reads the cache could not answer.",
         status.get("cache_misses", 0)),
        ("fetched_bytes_total", "counter", "Bytes fetched from the bucket.",
         status.get("fetched_bytes", 0)),
    ):
        out.append((f"worm_fs_replica_{name}", kind, help_text, [(labels, value)]))
    return out


def _quota_labels(q: dict[str, Any]) -> dict[str, str]:
    return {"uid": str(q["uid"])} if q["kind"] == "uid" else {"tree": str(q["path"])}


def _labels(labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}" if inner else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(samples: list[Sample]) -> str:
    lines: list[str] = []
    for name, kind, help_text, values in samples:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in values:
            number = int(value) if float(value).is_integer() else value
            lines.append(f"{name}{_labels(labels)} {number}")
    return "\n".join(lines) + "\n"
