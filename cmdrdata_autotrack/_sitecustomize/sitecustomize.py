"""Bootstrap of ``cmdrdata-run``: Python imports this at start-up because the launcher puts
this folder first on ``PYTHONPATH``. It starts the agent (patching happens later, when the
app imports ``openai``; the health server, when ``CMDRDATA_METRICS_PORT`` is set, opens
now), then runs the app's own ``sitecustomize``, if there is one."""


def _start_agent() -> None:
    try:
        from cmdrdata_autotrack.bootstrap import run
    except Exception:  # another interpreter that lacks the package: stay out of the way
        return
    run()


def _chain_to_next_sitecustomize() -> None:
    import importlib
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    ours = sys.modules.pop("sitecustomize", None)
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        importlib.import_module("sitecustomize")
    except ImportError as exc:
        if exc.name != "sitecustomize":
            print(
                f"Error in sitecustomize; set PYTHONVERBOSE for traceback:\n{exc!r}",
                file=sys.stderr,
            )
        if ours is not None:
            sys.modules["sitecustomize"] = ours
    except Exception as exc:
        print(f"Error in sitecustomize; set PYTHONVERBOSE for traceback:\n{exc!r}", file=sys.stderr)
    finally:
        sys.path[:] = saved


_start_agent()
_chain_to_next_sitecustomize()
