"""``python -m corral.worker``: the worker entry point when corral is importable directly.

The supervisor normally starts ``corral/worker/boot.py`` by path instead (see there),
so that an app interpreter without corral installed still finds it.
"""

import sys

from corral.worker.main import main

sys.exit(main(sys.argv[1:]))
