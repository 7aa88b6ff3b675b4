"""TF Serving's contracts, shared by the client, the backends and the embedded server.

``models.config`` (the ``ModelServerConfig`` text proto), tensor protos, the reload RPC's messages, status codes
and dtype names with the one :class:`~pipeline.wire.status.ServingError`, the gRPC I/O switch, and the layout of a
model base path on disk (:mod:`pipeline.wire.version_dirs`). Imports nothing of the pipeline but its errors.
"""
