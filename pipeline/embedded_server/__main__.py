"""``python -m pipeline.embedded_server``: tensorflow_model_server's command line."""

import sys

from pipeline.embedded_server.model_server import main

if __name__ == "__main__":
    sys.exit(main())
