"""python -m bifrost_testing.lab: run the lab (inside the test guest)."""

import sys

from bifrost_testing.lab import main

sys.exit(main())
