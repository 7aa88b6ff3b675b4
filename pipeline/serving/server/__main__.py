"""``python -m pipeline.serving.server``: tensorflow_model_server's command line."""

import sys

from pipeline.serving.server.model_server import main

if __name__ == "__main__":
    sys.exit(main())
