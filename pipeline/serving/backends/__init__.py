"""How a TF Serving is started or reached: local process, docker container, kubernetes deployment."""
