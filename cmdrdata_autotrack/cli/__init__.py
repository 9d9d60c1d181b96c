"""``cmdrdata-autotrack``: the operator's commands (report, doctor, flush, dead-letters)."""
