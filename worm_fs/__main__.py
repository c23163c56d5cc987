"""``python -m worm_fs`` is the ``worm-fs`` command."""

import sys

from worm_fs.cli import main

sys.exit(main())
