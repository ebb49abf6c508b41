"""``python -m proxy``: the same CLI as ``vipps-proxy``."""

import sys

from proxy.cli import main

sys.exit(main())
