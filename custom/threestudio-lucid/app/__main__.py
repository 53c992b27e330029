"""``python -m threestudio_lucid.app``: the same as ``lucid-app``."""
import sys

from .cli import main

sys.exit(main())
