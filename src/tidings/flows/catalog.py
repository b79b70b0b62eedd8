"""The flows of the config, and every earlier version a run may still be on.

A changed flow is a new version (a hash of its definition). Each version is stored when tidings
starts, so a run started before a change keeps the steps it began with, unless the new version
says `in_flight: migrate`, in which case the run continues on the new steps from the step it is
at (or ends, recorded, if that step is gone).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import Connection, select
from sqlalchemy.dialects import postgresql, sqlite

from tidings.flows.model import Flow
from tidings.store.schema import flow_versions


class FlowCatalog:
    def __init__(self, flows: Mapping[str, Flow]) -> None:
        self.current = dict(flows)
        self.versions = {name: flow.version() for name, flow in flows.items()}
        self._known: dict[tuple[str, str], Flow] = {
            (name, self.versions[name]): flow for name, flow in flows.items()
        }
        self.trigger_names = {n for flow in flows.values() for n in flow.trigger.names}

    def __bool__(self) -> bool:
        return bool(self.current)

    def register(self, conn: Connection, now: datetime) -> None:
        """Store the current version of every flow (once)."""
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        for name, flow in self.current.items():
            conn.execute(
                dialect.insert(flow_versions)
                .values(
                    flow=name,
                    version=self.versions[name],
                    definition=flow.model_dump(mode="json", by_alias=True, exclude_unset=True),
                    created_at=now,
                )
                .on_conflict_do_nothing()
            )

    def exit_names(self) -> set[str]:
        """The events that end runs, in every version loaded so far."""
        return {n for flow in self._known.values() for match in flow.exit_on for n in match.names}

    def resolve(self, conn: Connection, name: str, version: str) -> tuple[Flow, str] | None:
        """The definition a run on (`name`, `version`) follows now, and that version; None if the
        flow was removed from the config."""
        current = self.current.get(name)
        if current is None:
            return None
        if version == self.versions[name] or current.in_flight == "migrate":
            return current, self.versions[name]
        flow = self._known.get((name, version))
        if flow is None:
            definition = conn.execute(
                select(flow_versions.c.definition).where(
                    flow_versions.c.flow == name, flow_versions.c.version == version
                )
            ).scalar()
            if definition is None:
                return current, self.versions[name]  # unknown version: the current one is all we have
            flow = Flow.model_validate(definition)
            self._known[(name, version)] = flow
        return flow, version
