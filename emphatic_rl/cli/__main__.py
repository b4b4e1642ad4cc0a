"""``python -m emphatic_rl.cli``: the ``emphatic-rl`` command."""

import sys

from emphatic_rl.cli import main

sys.exit(main())
