"""The engine's side of an adapter in tests: an ``AdapterContext`` that records what the adapter
reports, for the test to look at (or wait on) afterwards."""

from __future__ import annotations

import asyncio

from dispatcher.adapter import DeviceStatus, Report


class RecordingContext:
    """Collects each report and device status the adapter gives, in order; ``changed`` is set
    whenever a report arrives (clear it before waiting on it)."""

    def __init__(self, name: str, *, node_name: str = "test-node") -> None:
        self._name = name
        self._node_name = node_name
        self.reports: list[Report] = []
        self.statuses: list[DeviceStatus] = []
        self.changed = asyncio.Event()

    @property
    def adapter_name(self) -> str:
        return self._name

    @property
    def node_name(self) -> str:
        return self._node_name

    def report(self, report: Report) -> None:
        self.reports.append(report)
        self.changed.set()

    def device_status(self, status: DeviceStatus) -> None:
        self.statuses.append(status)
