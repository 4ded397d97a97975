"""`python -m effx_serve.cli`: the same as the `effx-serve` command."""

import sys

from effx_serve.cli import main

sys.exit(main())
