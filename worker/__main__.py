"""`python -m worker` is the `zsc-worker` command."""

import sys

from worker.cli import main

sys.exit(main())
