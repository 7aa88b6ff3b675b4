"""TensorFlow Serving: the embedded compatible server, a client for any TF Serving, config tooling, backends."""
