"""An embedded TensorFlow Serving compatible model server (REST + gRPC) for SavedModels.

``python -m pipeline.embedded_server --port=8500 --rest_api_port=8501 --model_config_file=models.config`` takes
``tensorflow_model_server``'s flags; :class:`ModelServer` runs the same server inside a process (tests, benches).
Nothing heavy is imported until a server is built.
"""

from pipeline.embedded_server.flags import ServerOptions, parse_flags
from pipeline.embedded_server.model_server import READY_PREFIX, ModelServer, main

__all__ = ["READY_PREFIX", "ModelServer", "ServerOptions", "main", "parse_flags"]
