"""``python -m robustbench_aft.cli`` (torchrun, subprocess tests) is ``bench``."""
import sys

from . import main

sys.exit(main())
