"""python -m bifrost.lab: run the lab (inside the test guest)."""

import sys

from bifrost.lab import main

sys.exit(main())
