"""Whose usage an event is: the delivery settings of the process that metered it.

Processes with different tracker keys or endpoints may share one spool folder.
An event is only ever delivered with the key and endpoints of the process that
metered it, and recorded in a local ledger only when that process had no key.
So each journal segment and each spool row carries an *identity*:

* ``k-<16 hex>``: metered with a key; a truncated SHA-256 of the key, the
  events endpoint and the batch endpoint. Never the key itself, and safe to print.
* ``ledger``: metered without a key; the segment names the ledger it belongs in.
* ``""`` (unknown): spooled by a version that recorded no identity. Any process
  with a key delivers these, as that version did.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from .client import batch_url

LEDGER = "ledger"
UNKNOWN = ""
_DOMAIN = "cmdrdata-autotrack delivery identity v1"


@dataclass(frozen=True)
class Identity:
    fingerprint: str
    ledger_path: str | None = None  # for keyless usage: the ledger it is recorded in

    @property
    def keyed(self) -> bool:
        return self.fingerprint not in (LEDGER, UNKNOWN)

    def serves(self) -> tuple[str, ...]:
        """The spool rows a sender with this identity may deliver: its own, and unknown ones."""
        return (self.fingerprint, UNKNOWN) if self.keyed else ()

    def header(self) -> dict[str, Any]:
        """What a journal segment records about the process that writes it."""
        fields: dict[str, Any] = {"identity": self.fingerprint}
        if self.ledger_path is not None:
            fields["ledger"] = self.ledger_path
        return fields


def of(
    api_key: str | None, endpoint: str, batch_endpoint: str | None, ledger_path: str
) -> Identity:
    """The identity events metered with these settings are delivered (or recorded) under."""
    if not api_key:
        return Identity(LEDGER, ledger_path)
    # the batch endpoint as the client resolves it, so that "unset" and its default agree
    material = "\0".join((_DOMAIN, api_key, endpoint, batch_url(endpoint, batch_endpoint)))
    return Identity("k-" + hashlib.sha256(material.encode()).hexdigest()[:16])


def from_header(header: dict[str, Any] | None) -> Identity:
    """The identity a journal segment's header names (unknown without one)."""
    if header is None:
        return Identity(UNKNOWN)
    fingerprint = header.get("identity")
    ledger = header.get("ledger")
    if not isinstance(fingerprint, str):
        return Identity(UNKNOWN)
    return Identity(fingerprint, ledger if isinstance(ledger, str) else None)


def describe(fingerprint: str) -> str:
    """How a fingerprint is shown to operators."""
    if fingerprint == UNKNOWN:
        return "unknown (spooled by an older version)"
    return fingerprint


def describe_counts(counts: dict[str, int]) -> str:
    """``k-1a2b…: 3, unknown (…): 1``: events waiting per identity, largest first."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{describe(fingerprint)}: {count}" for fingerprint, count in ordered)
