"""Importing this module adds one to the file named by $CORRAL_TEST_IMPORT_COUNTER."""

import os
from pathlib import Path

_counter = Path(os.environ["CORRAL_TEST_IMPORT_COUNTER"])
_counter.write_text(str(int(_counter.read_text() or "0") + 1))
