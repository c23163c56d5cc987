"""worm-fs: a write-once FUSE filesystem for ML artifacts.

Layers, top to bottom (each imports only the ones below it):

* :mod:`worm_fs.cli` -- the ``worm-fs`` command
* :mod:`worm_fs.daemon` -- wiring: lock, recovery, mount, background tasks, shutdown
* :mod:`worm_fs.fuse_ops` -- the pyfuse3 adapter (the only module importing pyfuse3)
* :mod:`worm_fs.core` -- namespace, writing, sealing, the policy table, scrub
* :mod:`worm_fs.audit` -- records, the Merkle tree, signed checkpoints, the verifier
* :mod:`worm_fs.store` -- LMDB and the chunk store (the only package importing lmdb)
"""

__version__ = "0.1.0"
