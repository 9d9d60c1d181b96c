"""Instrument every Python process that finds this file on ``sys.path`` at start-up.

Python imports the first ``sitecustomize`` module it finds on ``sys.path`` while it
starts (unless run with ``-S``). Put this file in the interpreter's site-packages,
or in a folder on ``PYTHONPATH``, and every Python process is metered without
``cmdrdata-run``. It does not import ``openai``: the SDK is patched when the app
imports it. If the package is missing from an interpreter, that interpreter
simply runs uninstrumented.
"""

try:
    import cmdrdata_autotrack.auto  # noqa: F401
except ImportError:
    pass
