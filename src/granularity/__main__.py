"""``python -m granularity`` (also ``torchrun --nproc_per_node=N -m granularity transfer ...``)."""

import sys

from granularity.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
