"""``python -m daskgd.cli``: the same as the ``daskgd`` command."""

import sys

from daskgd.cli.app import main

sys.exit(main())
