"""``python -m l0_sparsity``: the command line (see :mod:`l0_sparsity.cli`)."""

import sys

from l0_sparsity.cli import main

sys.exit(main())
