"""``python -m ka2er_core.cli``: the ``ka2er`` command."""

import sys

from . import main

sys.exit(main())
