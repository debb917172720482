"""`python -m darktune` runs the CLI."""

import sys

from darktune.cli import main

sys.exit(main())
