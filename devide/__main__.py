"""``python -m devide`` (used by ``accelerate launch -m devide train``)."""

import sys

from devide.cli import main

sys.exit(main())
