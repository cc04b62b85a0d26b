"""`python -m timm_coded.cli`: the `timm-coded` command."""
import sys

from . import main

sys.exit(main())
