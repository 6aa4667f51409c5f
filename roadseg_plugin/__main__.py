"""`python -m roadseg_plugin ...`: the command line (see `roadseg_plugin.cli`)."""
import sys

from .cli import main

sys.exit(main())
