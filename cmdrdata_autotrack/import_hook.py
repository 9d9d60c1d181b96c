"""Run a function right after a module is first imported, without importing anything heavy.

The bootstrap uses it to wait for ``openai``: until the app imports the SDK, the
agent costs nothing but this finder on ``sys.meta_path`` (and, when
``CMDRDATA_METRICS_PORT`` is set, the health server's socket and thread). (wrapt has post-import
hooks too; the agent uses them once ``openai`` is there, but wrapt itself is not
imported at start-up.)
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

Hook = Callable[[ModuleType], None]


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, hook: Hook) -> None:
        self.name, self.hook = name, hook
        self._busy = threading.local()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name or getattr(self._busy, "on", False):
            return None
        self._busy.on = True
        try:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
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
