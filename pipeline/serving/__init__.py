"""TensorFlow Serving: the embedded compatible server, a client for any TF Serving, config tooling, backends."""

from pipeline.serving.grpc_io import prefer_classic_io

prefer_classic_io()  # before any module of this package imports grpc: see grpc_io for why
