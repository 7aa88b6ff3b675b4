"""A refusal ends an Airflow task as one ERROR line with its reason, not a traceback.

A gate that says no (:class:`~pipeline.errors.ValidationFailed` from evaluation, staging, the canary, a live phase,
a refused rollback, a failed probe; :meth:`pipeline.gates.Verdict.raise_if_failed`) or a trigger conf that is
refused (:class:`~pipeline.errors.ConfigError`) is an expected outcome whose message already says it all: the
gate, its figures and, after a rollback, what production serves. Frames add nothing to it.

Airflow 3.3's task runner logs every exception a task raises with its traceback ("Task failed with exception":
at least eleven frames of its own even when the task body raises it ``from None``), with one exception:
``SystemExit``, which it logs as one ERROR line (``Task exited exit_code=<the message>``) and otherwise handles as
any failure (the task fails or retries as its retry policy says; ``on_failure_callback`` gets it as
``context["exception"]``). So at the task boundary, and only there (the CLI and ``pipeline release`` keep the
plain errors), :func:`refusals_end_quietly` turns a refusal into :class:`Refused`, a ``SystemExit`` whose code is
the message, and :func:`refusal_retry_policy` fails it at once: a refusal does not change on a retry. Anything
unexpected keeps its traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from pipeline.errors import ConfigError, Preempted, ValidationFailed

if TYPE_CHECKING:
    from airflow.sdk.definitions.retry_policy import RetryPolicy

# A release an on-call rollback preempted (Preempted) stops the same way: the message says who took it and when.
REFUSALS: tuple[type[Exception], ...] = (ValidationFailed, ConfigError, Preempted)

F = TypeVar("F", bound=Callable[..., Any])


class Refused(SystemExit):  # noqa: N818 - named for what happened, as SystemExit is
    """A refusal at the Airflow task boundary: the task fails with one ERROR line carrying ``message``.

    Attributes:
        kind: the refusal's own class name (``ValidationFailed``, ``ConfigError``).
    """

    def __init__(self, message: str, kind: str = "ValidationFailed") -> None:
        super().__init__(message)
        self.kind = kind

    def __str__(self) -> str:
        return str(self.code)


def refusals_end_quietly(task_body: F) -> F:
    """Wrap an Airflow task body so that a refusal it raises ends the task as :class:`Refused`."""

    @functools.wraps(task_body)
    def body(*args: Any, **kwargs: Any) -> Any:
        try:
            return task_body(*args, **kwargs)
        except REFUSALS as exc:
            raise Refused(str(exc), type(exc).__name__) from None

    return body  # type: ignore[return-value]


def refusal_retry_policy() -> RetryPolicy:
    """Airflow's retry policy for tasks that may be refused: a :class:`Refused` fails at once, anything else
    retries as the task's ``retries`` say."""
    from airflow.sdk.definitions.retry_policy import ExceptionRetryPolicy, RetryAction, RetryRule

    return ExceptionRetryPolicy(rules=[RetryRule(exception=Refused, action=RetryAction.FAIL,
                                                 reason="a refusal does not change on a retry")])
