"""python -m staterank.cli"""

import sys

from . import main

sys.exit(main())
