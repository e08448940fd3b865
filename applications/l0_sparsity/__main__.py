"""``python -m l0_sparsity``: the command line (see :mod:`l0_sparsity.cli.app`)."""

import sys

from l0_sparsity.cli.app import main

sys.exit(main())
