"""`python -m companion`: the same command line as `companion`."""

import sys

from companion.cli import main

sys.exit(main())
