"""Process lifecycle: deliver on SIGTERM, chaining whatever handler the app installed."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from .telemetry.logging import error_once


def install_signal_handlers(on_terminate: Callable[[], None]) -> bool:
    """Flush on SIGTERM, then do what the signal did before (the app's handler, or exit).

    Only from the main thread (Python's rule), and never over ``SIG_IGN``. SIGINT
    needs nothing: it raises ``KeyboardInterrupt``, the interpreter exits, and the
    exit hook flushes.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except (AttributeError, ValueError):
        return False
    if previous is signal.SIG_IGN:
        return False

    def handler(signum: int, frame: FrameType | None) -> Any:
        try:
            on_terminate()
        except Exception:
            error_once("sigterm", "cmdrdata: could not flush on SIGTERM")
        if callable(previous):
            return previous(signum, frame)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return None

    try:
        signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):
        return False
    return True
