"""What a worker hands a handler: the ``Job`` (a request and its decoded input), the
``Handler`` type, and ``JobDenied``, which a handler raises to refuse a job."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import CordtrioError
from .protocol import JobRequest


class JobDenied(CordtrioError):
    """Raised by a handler that refuses the job (policy, permissions, bad request).

    Reported as ``DENIED`` with the exception's message; the engine treats it like a failure
    for retry purposes (SPEC §6) but it tells the operator the worker said *no*, not *oops*.
    """


@dataclass
class Job:
    """What a handler receives: the request plus its decoded input.

    ``input`` is the JSON object stored at the request's ``context_ptr`` (``{}`` when the
    request has no pointer). ``item`` is the for-each item: ``input["item"]`` when present,
    else the JSON-decoded ``env["foreach_item"]``, else ``None`` (see ``Job.from_request``).
    """

    request: JobRequest
    input: dict[str, Any] = field(default_factory=dict)
    item: Any = None

    @classmethod
    def from_request(cls, request: JobRequest, input: dict[str, Any] | None = None) -> Job:
        """Build a job the way the worker does, deriving ``item`` from input/env."""
        data = {} if input is None else input
        return cls(request, data, item_of(request, data))

    @property
    def job_id(self) -> str:
        return self.request.job_id

    @property
    def topic(self) -> str:
        return self.request.topic

    @property
    def run_id(self) -> str:
        """The workflow run this job belongs to (``env["run_id"]``, ``""`` if absent)."""
        return self.request.env.get("run_id", "")

    @property
    def step_id(self) -> str:
        """The step (or for-each child, ``step[i]``) id (``env["step_id"]``)."""
        return self.request.env.get("step_id", "")

    @property
    def attempt(self) -> int:
        """The attempt number: the ``@n`` suffix of the job id (1 when there is none)."""
        _, sep, suffix = self.request.job_id.rpartition("@")
        if sep and suffix.isdigit():
            return int(suffix)
        return 1


def item_of(request: JobRequest, data: dict[str, Any]) -> Any:
    """A job's for-each item (see ``Job``)."""
    if "item" in data:
        return data["item"]
    raw = request.env.get("foreach_item")
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw  # not JSON: hand the handler the raw string rather than nothing


Handler = Callable[[Job], Awaitable[Any]]
"""An async function taking a ``Job``; its JSON-serializable return value is the result."""


__all__ = ["Handler", "Job", "JobDenied", "item_of"]
