"""``python -m authproxy``: the same as the ``authproxy`` command."""

import sys

from authproxy.cli import main

sys.exit(main())
