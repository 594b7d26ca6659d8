"""``python -m replica ...``: run a replica with tensorflow_model_server's flags.

After a clean shutdown the process leaves with ``os._exit``: the server has already closed its
ports and sessions, and skipping TensorFlow's interpreter teardown saves most of a second per
stop (tests start and stop many replicas).
"""

import logging
import os
import sys

from replica.server import main

code = main()
logging.shutdown()
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
