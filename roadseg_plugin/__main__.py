"""`python -m roadseg_plugin ...`: the command line (see `roadseg_plugin.cli.main`)."""
import sys

from .cli.main import main

sys.exit(main())
