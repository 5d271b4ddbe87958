"""``python -m prunevid``: the kit's command line (``prunevid.harness.cli``)."""
import sys

from .harness.cli import main

sys.exit(main())
