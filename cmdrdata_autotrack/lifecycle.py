"""Process lifecycle: deliver on SIGTERM, chaining whatever handler the app installed."""

from __future__ import annotations

import os

# The bootstrap installs the handler in every process under cmdrdata-run: the C module
# behind ``signal`` sets the same handlers without loading ``enum`` and friends first.
try:
    import _signal as signal  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - an interpreter without it
    import signal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType
    from typing import Any


def install_signal_handlers(on_terminate: Callable[[], None]) -> bool:
    """Flush on SIGTERM, then do what the signal did before (the app's handler, or exit).

    Only from the main thread (Python's rule), and never over ``SIG_IGN``. SIGINT
    needs nothing: it raises ``KeyboardInterrupt``, the interpreter exits, and the
    exit hook flushes.
    """
    try:  # (off the main thread, signal.signal below raises ValueError)
        previous = signal.getsignal(signal.SIGTERM)
    except (AttributeError, ValueError):
        return False
    if previous == signal.SIG_IGN:  # 1, or the enum member equal to it
        return False

    def handler(signum: int, frame: FrameType | None) -> Any:
        try:
            on_terminate()
        except Exception:
            from .telemetry.logging import error_once

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
