"""MLOps release pipeline for TensorFlow models served by TensorFlow Serving.

Nothing heavy is imported here: DAG files import this package at parse time.
"""

__version__ = "0.1.0"
