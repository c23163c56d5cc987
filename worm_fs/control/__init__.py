"""The control channel: deletion requests and admin decisions, outside the mount.

* :mod:`.protocol` -- versioned JSON lines, validation, size limits
* :mod:`.server` -- the trio server on two Unix sockets (request, admin)
* :mod:`.client` -- one request, one answer, for the CLI
"""
