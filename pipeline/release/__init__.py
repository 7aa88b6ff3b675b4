"""Releasing exported versions: staging validation, promotion, canary checks, rollback, the registry.

Nothing is imported here on purpose: DAG files import :mod:`pipeline.release.registry` at parse time and
must not pay for TensorFlow or the serving clients that the other release modules need.
"""
