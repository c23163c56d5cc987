"""The filesystem core: no FUSE, no trio.

* :mod:`.fs` -- :class:`WormCore`, assembled from the parts below; store statistics
* :mod:`.base` -- shared state and its locks ("who protects what"), commit hooks,
  failsafe, refusals
* :mod:`.namespace` -- lookups, create/mkdir/symlink, rename, setattr, refusals
* :mod:`.files` -- open, read, write, flush: the data path
* :mod:`.sealing` -- release and seal, quarantine, crash recovery
* :mod:`.committer` -- the one thread that writes the store (group commit)
* :mod:`.storer` -- hashing full chunks off the request path
* :mod:`.handles` -- open handles and a writer's buffered chunks
* :mod:`.policy` -- the table of what is allowed on which entry
* :mod:`.settle` -- whether an entry is inside its settle window
* :mod:`.model` -- inodes, callers, attribute changes
* :mod:`.paths` -- paths from parent links, ISO times
* :mod:`.deletion` -- requests, approvals, holds, retention
* :mod:`.clock` -- the trusted clock; :mod:`.scrub` -- re-hash everything
"""
