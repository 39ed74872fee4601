"""The directory's rows as the importer writes them and the exporter reads them.

Named tuples, because millions of them pass through the importer: they are cheap to build and
their first field is always the row's key (an area's code, everything else's id).
"""

from __future__ import annotations

from typing import NamedTuple

from dispatcher.domain import AreaLevel, Channel, DeviceKind

#: Rank of each area level, top first: a parent's rank is always lower than its child's.
AREA_LEVEL_RANK: dict[AreaLevel, int] = {level: rank for rank, level in enumerate(AreaLevel)}


class AreaRecord(NamedTuple):
    code: str
    name: str
    level: AreaLevel
    parent_code: str | None


class GridRecord(NamedTuple):
    id: str
    village_code: str
    name: str


class HouseholdRecord(NamedTuple):
    id: str
    grid_id: str
    #: Denormalised from the grid.
    village_code: str
    address: str


class PersonRecord(NamedTuple):
    id: str
    name: str
    #: E.164 numbers; the first is the primary one. Empty for a person without a phone.
    phones: tuple[str, ...]
    household_id: str | None
    #: The household's village, or the one given for a person without a household.
    village_code: str
    #: Bit mask of :class:`dispatcher.domain.Role` (see ``roles_to_mask``).
    roles: int
    vulnerable: bool
    lives_alone: bool
    #: In the person's order of preference.
    preferred_channels: tuple[Channel, ...]
    #: Grids this person serves as grid member.
    grids: tuple[str, ...]


class DeviceRecord(NamedTuple):
    id: str
    kind: DeviceKind
    name: str
    adapter: str
    address: str
    #: Where the device is installed.
    area_code: str
    #: The areas its broadcast reaches.
    serves: tuple[str, ...]
