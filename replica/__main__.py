"""``python -m replica ...``: run a replica with tensorflow_model_server's flags."""

import sys

from replica.server import main

sys.exit(main())
