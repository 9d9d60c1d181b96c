"""Run a function right after a module is first imported, without importing anything heavy.

The bootstrap uses it to wait for ``openai``: until the app imports the SDK, the
agent costs nothing but this finder on ``sys.meta_path`` (and, when
``CMDRDATA_METRICS_PORT`` is set, the health server's socket and thread). (wrapt has post-import
hooks too; the agent uses them once ``openai`` is there, but wrapt itself is not
imported at start-up.)

It runs in every Python process under ``cmdrdata-run``, so it imports only what the
interpreter has already loaded or nearly so: not ``importlib.abc`` (which pulls
``importlib.resources``, ``tempfile``, ``pathlib``...), ``threading`` or ``typing``.
"""

from __future__ import annotations

import sys
from _thread import _local as thread_local  # what threading.local is, without threading
from importlib.machinery import PathFinder

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

    Hook = Callable[[ModuleType], None]


class _Finder:
    """A ``sys.meta_path`` finder (the protocol needs only ``find_spec``) for one module."""

    def __init__(self, name: str, hook: Hook) -> None:
        self.name, self.hook = name, hook
        self._busy = thread_local()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != self.name or getattr(self._busy, "on", False):
            return None
        self._busy.on = True
        try:
            spec = PathFinder.find_spec(fullname, path)
            if spec is None:
                for finder in sys.meta_path:
                    if finder is self or not hasattr(finder, "find_spec"):
                        continue
                    spec = finder.find_spec(fullname, path, target)
                    if spec is not None:
                        break
        finally:
            self._busy.on = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader: Any = spec.loader
        hook, finder = self.hook, self
        original = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            original(module)
            finder.remove()
            hook(module)

        loader.exec_module = exec_module
        return spec

    def remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def when_imported(name: str, hook: Hook) -> None:
    """Call ``hook(module)`` once ``name`` is imported (now, if it already is)."""
    module = sys.modules.get(name)
    if module is not None:
        hook(module)
        return
    sys.meta_path.insert(0, _Finder(name, hook))
