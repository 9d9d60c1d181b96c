"""``TrackedOpenAI``: an explicit drop-in for apps that do not use the launcher.

It is a real ``openai.OpenAI`` (``isinstance`` holds, every SDK feature works)
whose construction makes sure the agent runs with the tracker settings given.
Code written for the ``cmdrdata-openai`` package's ``TrackedOpenAI`` runs
unchanged: the same constructor arguments, ``customer_id=`` and
``track_usage=`` on calls, ``get_openai_client()`` and ``get_tracker()``.
"""

from __future__ import annotations

from typing import Any

import openai

from . import agent
from .telemetry.logging import error_once


class _Tracked:
    """What both clients add: the tracker settings, and the cmdrdata-openai accessors."""

    def _start_agent(
        self,
        tracker_key: str | None,
        tracker_endpoint: str | None,
        tracker_timeout: float | None,
    ) -> None:
        try:
            agent.ensure_started(
                api_key=tracker_key, endpoint=tracker_endpoint, timeout=tracker_timeout
            )
        except Exception:  # metering must never stop the app from making its client
            error_once("tracked-start", "cmdrdata: could not start; this client is not metered")

    def get_openai_client(self) -> Any:
        return self

    def get_tracker(self) -> agent.Agent | None:
        return agent.get()


class TrackedOpenAI(_Tracked, openai.OpenAI):
    def __init__(
        self,
        api_key: str | None = None,
        tracker_key: str | None = None,
        tracker_endpoint: str | None = None,
        tracker_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        self._start_agent(tracker_key, tracker_endpoint, tracker_timeout)
        super().__init__(api_key=api_key, **kwargs)


class AsyncTrackedOpenAI(_Tracked, openai.AsyncOpenAI):
    def __init__(
        self,
        api_key: str | None = None,
        tracker_key: str | None = None,
        tracker_endpoint: str | None = None,
        tracker_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        self._start_agent(tracker_key, tracker_endpoint, tracker_timeout)
        super().__init__(api_key=api_key, **kwargs)
