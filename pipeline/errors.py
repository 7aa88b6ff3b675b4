"""The small set of exceptions the pipeline raises. Messages say what to do next."""


class PipelineError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(PipelineError):
    """A config file or value is wrong; the message names the field."""


class SourceUnavailable(PipelineError):
    """A data source could not be reached, fetched or verified."""


class ValidationFailed(PipelineError):
    """A gate (data, model, staging, canary) said no; the message carries its figures."""


class DeadlineExceeded(PipelineError):
    """Something did not happen before its deadline (a version loading, a server starting)."""


class NotFound(PipelineError):
    """A model, version or run that was asked for does not exist."""


class Preempted(PipelineError):
    """An on-call rollback took the model's lock from this release: it stops and changes no server."""
