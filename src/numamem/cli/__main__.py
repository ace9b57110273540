"""``python -m numamem.cli``: the ``numamem`` command."""
import sys

from numamem.cli import main

sys.exit(main())
