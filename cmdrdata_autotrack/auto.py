"""``import cmdrdata_autotrack.auto`` instruments this process, like ``cmdrdata-run`` does.

For servers where a launcher cannot wrap the command (uWSGI, AWS Lambda, an
image's own ``sitecustomize``): import it first, before the app imports ``openai``
(after is fine too: the SDK's classes are patched wherever they are). With
``CMDRDATA_METRICS_PORT`` set, ``/healthz`` and ``/metrics`` answer from this import on.
"""

from .bootstrap import run

run()
