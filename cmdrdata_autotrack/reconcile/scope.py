"""Which part of the organization's usage to compare with: the app's own keys, if known.

OpenAI reports the usage of the whole organization; an app usually has a key
(or a project) of its own, and other apps' usage would otherwise count as
"unmetered". When every metered call records the last four characters of the
key it used, those are matched with the redacted values of the organization's
project keys (``sk-proj-...abcd``) and the Usage API is asked for those keys
only. Without that, it falls back on the calls' project, then on the whole
organization, and says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from .metered import KEY_SUFFIX_FIELD, PROJECT_FIELD, MeteredCall
from .usage_api import AdminAPIError, ProjectKey

MIN_MATCH = 3  # OpenAI's documentation shows redacted values ending in 3 characters too


@dataclass
class Scope:
    """What OpenAI is asked about, which metered calls count, and how keys are named."""

    api_key_ids: tuple[str, ...] = ()
    project_ids: tuple[str, ...] = ()
    key_ids: dict[str, str] = field(default_factory=dict)  # key suffix -> API key id
    description: str = "the whole organization"
    notes: list[str] = field(default_factory=list)
    # Calls whose key or project falls outside an explicit scope are left out.
    excluded_suffixes: frozenset[str] = frozenset()

    @property
    def scoped(self) -> bool:
        return bool(self.api_key_ids or self.project_ids)

    def admits(self, call: MeteredCall) -> bool:
        if call.key_suffix is not None and call.key_suffix in self.excluded_suffixes:
            return False
        return not (
            self.project_ids
            and call.project_id is not None
            and call.project_id not in self.project_ids
        )


def redacted_tail(redacted: str) -> str:
    """The visible end of a redacted key (``sk-proj-...abcd`` -> ``abcd``)."""
    return redacted.rsplit("...", 1)[-1] if "..." in redacted else redacted[-4:]


def matches(redacted: str, suffix: str) -> bool:
    tail = redacted_tail(redacted)
    n = min(len(tail), len(suffix))
    return n >= MIN_MATCH and tail[-n:] == suffix[-n:]


def key_ids_by_suffix(keys: Sequence[ProjectKey], suffixes: Iterable[str]) -> dict[str, list[str]]:
    return {s: sorted({k.id for k in keys if matches(k.redacted_value, s)}) for s in suffixes}


def decide(
    calls: Sequence[MeteredCall],
    *,
    api_key_ids: Sequence[str] = (),
    project_ids: Sequence[str] = (),
    all_keys: bool = False,
    list_keys: Callable[[], list[ProjectKey]] | None = None,
    need_key_names: bool = False,
) -> Scope:
    """The scope for ``calls`` (aggregated calls: ``units.requests`` each).

    ``api_key_ids``/``project_ids`` scope explicitly; ``all_keys`` compares with the
    whole organization; otherwise the scope is inferred from the calls. ``list_keys``
    reads the organization's project keys (called at most once, only when needed).
    """
    total = sum(int(c.units.requests) for c in calls)
    suffixes = sorted({c.key_suffix for c in calls if c.key_suffix})
    without_key = sum(int(c.units.requests) for c in calls if not c.key_suffix)
    projects = sorted({c.project_id for c in calls if c.project_id})
    without_project = sum(int(c.units.requests) for c in calls if not c.project_id)
    scope = Scope()
    keys: list[ProjectKey] | None = None

    def read_keys() -> list[ProjectKey] | None:
        nonlocal keys
        if keys is None and list_keys is not None:
            try:
                keys = list_keys()
            except AdminAPIError as exc:
                scope.notes.append(f"The organization's API keys could not be listed: {exc}")
                keys = []
        return keys

    inferring = not (all_keys or project_ids or api_key_ids)
    if suffixes and (need_key_names or api_key_ids or (inferring and not without_key)):
        found = read_keys() or []
        by_suffix = key_ids_by_suffix(found, suffixes)
        scope.key_ids = {s: ids[0] for s, ids in by_suffix.items() if len(ids) == 1}
    else:
        by_suffix = {}

    if api_key_ids or project_ids:
        scope.api_key_ids, scope.project_ids = tuple(api_key_ids), tuple(project_ids)
        parts = [f"API key(s) {', '.join(api_key_ids)}"] if api_key_ids else []
        parts += [f"project(s) {', '.join(project_ids)}"] if project_ids else []
        scope.description = " and ".join(parts)
        if api_key_ids:
            wanted = set(api_key_ids)
            scope.excluded_suffixes = frozenset(
                s for s, ids in by_suffix.items() if ids and not wanted.intersection(ids)
            )
        if without_key and api_key_ids:
            scope.notes.append(
                f"{without_key:,} metered call(s) do not record their OpenAI key "
                f"({KEY_SUFFIX_FIELD}): they are compared whichever key they used."
            )
        return scope
    if all_keys:
        scope.notes.append(
            "Compared with the whole organization (--all-keys): usage of other apps and "
            "people sharing it counts as unmetered."
        )
        return scope
    if not total:
        return scope

    if suffixes and not without_key:
        ids = sorted({i for found in by_suffix.values() for i in found})
        unknown = [s for s, found in by_suffix.items() if not found]
        shared = [s for s, found in by_suffix.items() if len(found) > 1]
        if unknown:
            scope.notes.append(
                "No API key of the organization ends in "
                + ", ".join(f"...{s}" for s in unknown)
                + " (a key deleted since, or one of another organization)."
            )
        if shared:
            scope.notes.append(
                "More than one API key ends in "
                + ", ".join(f"...{s}" for s in shared)
                + ": all of them are compared."
            )
        if ids:
            scope.api_key_ids = tuple(ids)
            scope.description = f"the app's API key(s) {', '.join(ids)}"
            return scope
        scope.notes.append("The app's keys could not be found: compared with the organization.")
        return scope
    if suffixes:
        scope.notes.append(
            f"{without_key:,} of {total:,} metered call(s) do not record their OpenAI key "
            f"({KEY_SUFFIX_FIELD}; agents older than this feature), so the comparison is not "
            "scoped to the app's keys: other apps' usage counts as unmetered."
        )
        return scope
    if projects and not without_project:
        scope.project_ids = tuple(projects)
        scope.description = f"the app's project(s) {', '.join(projects)}"
        return scope
    scope.notes.append(
        f"The metered calls do not record which OpenAI key or project they used "
        f"({KEY_SUFFIX_FIELD}, {PROJECT_FIELD}): compared with the whole organization, so "
        "usage of other apps sharing it counts as unmetered. Scope with --api-key-id or "
        "--project."
    )
    return scope
