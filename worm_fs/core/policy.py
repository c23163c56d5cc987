"""The write-once rules: what is allowed on which entry, in one table.

Read :data:`RULES` top to bottom. A row is an operation, a column is the kind/state of
the entry it acts on (for create/mkdir/symlink/mknod, the parent directory). A cell is
a :class:`Rule`: unconditionally allowed, unconditionally refused with an errno, or
allowed under one named condition. :func:`decide` evaluates a cell and is the only
place that picks an errno for a policy refusal.

Conditions:

* ``WRITER``: only through the file's single writable handle (the one ``create``
  returned), while it is open.
* ``SETTLING``: only by the uid that created the entry, and only while its settle window
  is open (:mod:`worm_fs.core.settle`: it, or for a directory anything below it, changed
  less than ``--settle`` seconds ago, within ``--settle-limit`` of its creation, with
  nothing held and, for a directory, everything below created by the same uid). This is
  what ``tar``, ``cp -p``, ``rsync`` and write-temp-then-rename savers need.
* ``SETTLING_NOOP``: as ``SETTLING``, and the change must leave the value as it is
  (``chown`` to the current owner, which ``tar``/``cp -a``/``rsync -a`` do as root).

Errors in the request itself (a bad name, an unsupported flag) are decided before the
table, by the functions at the end of this module: as on other filesystems, a caller
hears what is wrong with its arguments before it hears "not allowed".
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from enum import Enum, StrEnum

from worm_fs.core.model import Inode, Kind, State
from worm_fs.core.paths import NAME_MAX


class Op(StrEnum):
    OPEN_READ = "open_read"
    OPEN_WRITE = "open_write"  # O_WRONLY, O_RDWR, O_TRUNC or O_APPEND on an existing name
    WRITE = "write"
    TRUNCATE = "truncate"
    CHMOD = "chmod"
    CHOWN = "chown"
    UTIMES = "utimes"
    SETXATTR = "setxattr"  # user.* attributes
    SET_FOREIGN_XATTR = "set_foreign_xattr"  # ACLs, security labels: not supported at all
    REMOVEXATTR = "removexattr"
    UNLINK = "unlink"
    RMDIR = "rmdir"
    RENAME = "rename"  # move an entry to a name that does not exist
    RENAME_OVER = "rename_over"  # move onto an existing name, or exchange two names
    LINK = "link"
    CREATE = "create"  # a new file, directory or symlink in a directory
    MKNOD = "mknod"  # device nodes, FIFOs, sockets


class Cond(Enum):
    ALWAYS = "always"
    NEVER = "never"
    WRITER = "writer"
    SETTLING = "settling"
    SETTLING_NOOP = "settling_noop"


@dataclass(frozen=True)
class Rule:
    cond: Cond
    errno: int = errno.EPERM
    #: The errno that comes first when the directory acted on has entries (``rmdir``).
    not_empty: int | None = None


class Column(StrEnum):
    WRITING = "writing"
    SEALED = "sealed"
    QUARANTINED = "quarantined"
    DIR = "dir"
    SYMLINK = "symlink"


ALLOW = Rule(Cond.ALWAYS)
DENY = Rule(Cond.NEVER)
WRITER = Rule(Cond.WRITER)
SETTLING = Rule(Cond.SETTLING)
SETTLING_NOOP = Rule(Cond.SETTLING_NOOP)
EXISTS = Rule(Cond.NEVER, errno.EEXIST)
IS_DIR = Rule(Cond.NEVER, errno.EISDIR)
NOT_DIR = Rule(Cond.NEVER, errno.ENOTDIR)
#: ``cp -a`` and ``rsync -A`` fall back to plain chmod on EOPNOTSUPP, not on EPERM.
UNSUPPORTED = Rule(Cond.NEVER, errno.EOPNOTSUPP)
#: ``rmdir``: ENOTEMPTY while the directory has entries (what any filesystem answers,
#: and what the caller can act on), EPERM once it is empty (nothing is deleted here).
DENY_DIR = Rule(Cond.NEVER, errno.EPERM, not_empty=errno.ENOTEMPTY)

_COLUMNS = (Column.WRITING, Column.SEALED, Column.QUARANTINED, Column.DIR, Column.SYMLINK)

# fmt: off
RULES: dict[Op, tuple[Rule, Rule, Rule, Rule, Rule]] = {
    #                       WRITING          SEALED          QUARANTINED     DIR            SYMLINK
    Op.OPEN_READ:           (ALLOW,          ALLOW,          ALLOW,          ALLOW,         ALLOW),
    Op.OPEN_WRITE:          (DENY,           DENY,           DENY,           IS_DIR,        DENY),
    Op.WRITE:               (WRITER,         DENY,           DENY,           IS_DIR,        DENY),
    Op.TRUNCATE:            (WRITER,         DENY,           DENY,           IS_DIR,        DENY),
    Op.CHMOD:               (SETTLING,       SETTLING,       DENY,           SETTLING,      DENY),
    Op.CHOWN:               (SETTLING_NOOP,  SETTLING_NOOP,  DENY,           SETTLING_NOOP, SETTLING_NOOP),
    Op.UTIMES:              (SETTLING,       SETTLING,       DENY,           SETTLING,      SETTLING),
    Op.SETXATTR:            (DENY,           DENY,           DENY,           DENY,          DENY),
    Op.SET_FOREIGN_XATTR:   (UNSUPPORTED,    UNSUPPORTED,    UNSUPPORTED,    UNSUPPORTED,   UNSUPPORTED),
    Op.REMOVEXATTR:         (DENY,           DENY,           DENY,           DENY,          DENY),
    Op.UNLINK:              (DENY,           DENY,           DENY,           IS_DIR,        DENY),
    Op.RMDIR:               (NOT_DIR,        NOT_DIR,        NOT_DIR,        DENY_DIR,      NOT_DIR),
    Op.RENAME:              (SETTLING,       SETTLING,       DENY,           SETTLING,      SETTLING),
    Op.RENAME_OVER:         (EXISTS,         EXISTS,         EXISTS,         EXISTS,        EXISTS),
    Op.LINK:                (DENY,           DENY,           DENY,           DENY,          DENY),
    Op.CREATE:              (NOT_DIR,        NOT_DIR,        NOT_DIR,        ALLOW,         NOT_DIR),
    Op.MKNOD:               (DENY,           DENY,           DENY,           DENY,          DENY),
}
# fmt: on


@dataclass(frozen=True)
class Facts:
    """What the conditions need to know about one request."""

    is_creator: bool = False
    unsettled: bool = False
    via_writer: bool = False
    is_noop: bool = False
    #: The directory acted on has entries (computed for ``rmdir`` only).
    not_empty: bool = False
    #: Why the settle window is closed, for the refusal's message.
    closed: str = ""
    #: The mount is read-only (a replica): see :data:`READ_ONLY_OPS`.
    read_only: bool = False


#: After detected corruption or a storage I/O error the store goes failsafe: reads go on,
#: every change is refused with this errno until an admin has checked and remounted it.
FAILSAFE_ERRNO = errno.EROFS

#: A read-only mount (a replica following a primary's bucket) allows only the rows
#: below; every other operation, on every column, is refused with ``READ_ONLY_ERRNO``
#: (checked before the table: "this mount changes nothing" comes before "not allowed
#: on this entry"), and so is every change asked for through the control channel.
READ_ONLY_OPS = frozenset({Op.OPEN_READ})
READ_ONLY_ERRNO = errno.EROFS


def column_of(inode: Inode) -> Column:
    if inode.kind is Kind.DIR:
        return Column.DIR
    if inode.kind is Kind.SYMLINK:
        return Column.SYMLINK
    return {
        State.WRITING: Column.WRITING,
        State.SEALED: Column.SEALED,
        State.QUARANTINED: Column.QUARANTINED,
    }[inode.state]


def rule_for(op: Op, column: Column) -> Rule:
    return RULES[op][_COLUMNS.index(column)]


def needs_settle(op: Op, inode: Inode) -> bool:
    """Whether deciding ``op`` on ``inode`` depends on the settle window (which may cost
    a walk of a directory's subtree, so it is computed only when it matters)."""
    return rule_for(op, column_of(inode)).cond in (Cond.SETTLING, Cond.SETTLING_NOOP)


def decide(op: Op, inode: Inode, facts: Facts) -> int | None:
    """``None`` if ``op`` on ``inode`` is allowed, else the errno to refuse it with."""
    if facts.read_only and op not in READ_ONLY_OPS:
        return READ_ONLY_ERRNO
    rule = rule_for(op, column_of(inode))
    if rule.not_empty is not None and facts.not_empty:
        return rule.not_empty
    allowed = {
        Cond.ALWAYS: True,
        Cond.NEVER: False,
        Cond.WRITER: facts.via_writer,
        Cond.SETTLING: facts.is_creator and facts.unsettled,
        Cond.SETTLING_NOOP: facts.is_creator and facts.unsettled and facts.is_noop,
    }[rule.cond]
    return None if allowed else rule.errno


# -- argument errors: checked before the table ---------------------------------------
def name_errno(name: bytes) -> int | None:
    """``None`` for a usable entry name, else ``ENAMETOOLONG`` (over ``NAME_MAX`` bytes,
    the ``f_namemax`` that ``statfs`` reports) or ``EINVAL``. Only the length can come
    from the kernel: it resolves ``.`` and ``..`` and splits paths at ``/`` itself."""
    if len(name) > NAME_MAX:
        return errno.ENAMETOOLONG
    if not name or b"/" in name or name in (b".", b".."):
        return errno.EINVAL
    return None


#: ``renameat2(2)`` flags (``linux/fs.h``), passed through FUSE unchanged.
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4
#: Every rename here is a ``RENAME_NOREPLACE`` one, and an exchange is decided by the
#: table (``RENAME_OVER``). A whiteout (overlayfs asks for one) would leave a device
#: node in the old name's place: unsupported, like any flag not listed here.
RENAME_FLAGS = RENAME_NOREPLACE | RENAME_EXCHANGE


def rename_flags_errno(flags: int) -> int | None:
    """``None`` if a rename with ``flags`` can be decided by the table, else ``EINVAL``."""
    return errno.EINVAL if flags & ~RENAME_FLAGS else None


# -- read access: the only mode bits added after creation ----------------------------
#: What ``--seal-read-mode`` and ``worm-fs share`` may add: read bits, and for
#: directories search bits. Never a write bit, never setuid/setgid/sticky.
READ_BITS = 0o444
SEARCH_BITS = 0o111
SHAREABLE_BITS = READ_BITS | SEARCH_BITS


def read_bits_for(kind: Kind, mode: int) -> int:
    """The bits ``mode`` (a subset of :data:`SHAREABLE_BITS`) adds to an entry of
    ``kind``: a file gets its read bits; a directory gets them with the matching search
    bits (reading names without entering would be of no use), plus any search bit
    given; a symlink's mode means nothing, so nothing."""
    if kind is Kind.FILE:
        return mode & READ_BITS
    if kind is Kind.DIR:
        read = mode & READ_BITS
        return read | (read >> 2) | (mode & SEARCH_BITS)
    return 0


def parse_read_mode(text: str, what: str, allowed: int = READ_BITS) -> int:
    """An octal mode of ``allowed`` bits only (read bits unless told); ValueError saying
    what is wrong."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise ValueError(f"{what} must be an octal mode such as 0444, not {text!r}") \
            from None
    if mode < 0 or mode & ~allowed:
        raise ValueError(f"{what} {text} has bits other than {allowed:04o} (read access "
                         "only; never write bits)")
    return mode
