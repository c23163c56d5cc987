"""The policy table, evaluated directly (no store, no mount)."""

from __future__ import annotations

import errno

import pytest

from worm_fs.core.model import Inode, Kind, State
from worm_fs.core.policy import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    RENAME_WHITEOUT,
    RULES,
    Column,
    Cond,
    Facts,
    Op,
    column_of,
    decide,
    name_errno,
    rename_flags_errno,
)


def entry(kind: Kind = Kind.FILE, state: State = State.SEALED) -> Inode:
    return Inode(ino=7, kind=kind, mode=0o444, uid=1000, gid=1000, parent=1, name=b"x",
                 state=state)


SEALED = entry()
WRITING = entry(state=State.WRITING)
QUARANTINED = entry(state=State.QUARANTINED)
DIRECTORY = entry(Kind.DIR)
SYMLINK = entry(Kind.SYMLINK)
EVERYTHING = Facts(is_creator=True, unsettled=True, via_writer=True, is_noop=True)


def test_every_operation_has_a_rule_for_every_column() -> None:
    assert set(RULES) == set(Op)
    assert all(len(row) == len(Column) for row in RULES.values())


@pytest.mark.parametrize("op", [Op.UNLINK, Op.LINK, Op.MKNOD, Op.SETXATTR, Op.REMOVEXATTR])
@pytest.mark.parametrize("inode", [SEALED, WRITING, QUARANTINED, SYMLINK])
def test_never_allowed_whatever_the_facts(op: Op, inode: Inode) -> None:
    assert decide(op, inode, EVERYTHING) == errno.EPERM


def test_rmdir_is_refused_even_when_everything_else_would_allow() -> None:
    assert decide(Op.RMDIR, DIRECTORY, EVERYTHING) == errno.EPERM
    assert decide(Op.RMDIR, SEALED, EVERYTHING) == errno.ENOTDIR


def test_rename_over_an_existing_name_is_eexist() -> None:
    for inode in (SEALED, WRITING, DIRECTORY, SYMLINK):
        assert decide(Op.RENAME_OVER, inode, EVERYTHING) == errno.EEXIST


def test_write_access_opens_are_refused_on_every_file_state() -> None:
    for inode in (SEALED, WRITING, QUARANTINED):
        assert decide(Op.OPEN_WRITE, inode, EVERYTHING) == errno.EPERM
        assert decide(Op.OPEN_READ, inode, Facts()) is None


def test_writes_and_truncation_only_through_the_writer_handle() -> None:
    assert decide(Op.WRITE, WRITING, Facts(via_writer=True)) is None
    assert decide(Op.WRITE, WRITING, Facts(is_creator=True, unsettled=True)) == errno.EPERM
    assert decide(Op.TRUNCATE, WRITING, Facts(via_writer=True)) is None
    assert decide(Op.TRUNCATE, SEALED, EVERYTHING) == errno.EPERM


@pytest.mark.parametrize("op", [Op.RENAME, Op.UTIMES, Op.CHMOD])
def test_settling_operations_need_both_creator_and_unsettled(op: Op) -> None:
    assert decide(op, SEALED, Facts(is_creator=True, unsettled=True)) is None
    assert decide(op, SEALED, Facts(is_creator=False, unsettled=True)) == errno.EPERM
    assert decide(op, SEALED, Facts(is_creator=True, unsettled=False)) == errno.EPERM
    assert decide(op, QUARANTINED, EVERYTHING) == errno.EPERM


def test_chown_only_as_a_no_op_while_settling() -> None:
    assert decide(Op.CHOWN, SEALED, Facts(is_creator=True, unsettled=True, is_noop=True)) is None
    assert decide(Op.CHOWN, SEALED, Facts(is_creator=True, unsettled=True)) == errno.EPERM


def test_acl_and_label_xattrs_are_unsupported_not_denied() -> None:
    assert decide(Op.SET_FOREIGN_XATTR, SEALED, EVERYTHING) == errno.EOPNOTSUPP


def test_columns() -> None:
    assert column_of(WRITING) is Column.WRITING
    assert column_of(DIRECTORY) is Column.DIR
    assert RULES[Op.CREATE][list(Column).index(Column.DIR)].cond is Cond.ALWAYS


def test_rmdir_of_a_directory_with_entries_is_enotempty_before_the_refusal() -> None:
    assert decide(Op.RMDIR, DIRECTORY, Facts(not_empty=True)) == errno.ENOTEMPTY
    assert decide(Op.RMDIR, DIRECTORY, Facts(not_empty=False)) == errno.EPERM
    assert decide(Op.RMDIR, SEALED, Facts(not_empty=True)) == errno.ENOTDIR


def test_bad_names_and_rename_flags_are_argument_errors() -> None:
    assert name_errno(b"x" * 255) is None
    assert name_errno(b"x" * 256) == errno.ENAMETOOLONG
    for bad in (b"", b".", b"..", b"a/b"):
        assert name_errno(bad) == errno.EINVAL
    for flags in (0, RENAME_NOREPLACE, RENAME_EXCHANGE):
        assert rename_flags_errno(flags) is None
    assert rename_flags_errno(RENAME_WHITEOUT) == errno.EINVAL
    assert rename_flags_errno(1 << 7) == errno.EINVAL
