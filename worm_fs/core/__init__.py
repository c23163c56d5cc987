"""The filesystem core: no FUSE, no trio.

* :mod:`.model` -- inodes, callers, attribute changes
* :mod:`.policy` -- the table of what is allowed on which entry
* :mod:`.handles` -- open handles and a writer's buffered chunks
* :mod:`.fs` -- :class:`WormCore`: namespace, write, flush, seal, recovery
* :mod:`.scrub` -- re-hash everything and report corruption
"""
