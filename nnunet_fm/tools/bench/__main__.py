"""``python -m nnunet_fm.tools.bench``."""

import sys

from nnunet_fm.tools.bench.cli import main

sys.exit(main())
