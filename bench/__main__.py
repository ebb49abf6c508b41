"""Entry point: ``python -m bench [--quick] [--profile SECONDS]``."""

from bench.run import main

raise SystemExit(main())
