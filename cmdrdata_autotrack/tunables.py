"""The sizes ``configure_performance()`` may change (the ``cmdrdata-openai`` API).

Read where they are used, each time a cache or pool is made or bounded, so a
change applies from then on.
"""

from __future__ import annotations

CACHE_SIZE = 10_000  # entries of each bounded lookup cache (limits per customer, price per model)
MAX_CONNECTIONS = 4  # keep-alive connections of a delivery client's pool
