"""`python -m harness.cli ...`: the same as the `tpbench` command."""

import sys

from . import main

sys.exit(main())
