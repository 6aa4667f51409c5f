"""`python -m roadseg_plugin ...`: the command line (see `roadseg_plugin.cli`)."""
import sys

from .cli.main import main

sys.exit(main())
