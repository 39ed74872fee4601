"""Checking one CSV row: first on its own (``parse_*``), then against the directory
(``check_*``, given what the importer looked up for the row's batch).

Every problem is a :class:`FieldError` naming the column, worded for the person who prepared the
file. A row stops at its first problem.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Container, Mapping

import phonenumbers

from dispatcher.directory.csv_format import FALSE_WORDS, TRUE_WORDS
from dispatcher.directory.records import (
    AREA_LEVEL_RANK,
    AreaRecord,
    DeviceRecord,
    GridRecord,
    HouseholdRecord,
    PersonRecord,
)
from dispatcher.domain import PERSON_CHANNELS, AreaLevel, Channel, DeviceKind, Role

#: Region assumed for numbers written without a country code.
DEFAULT_PHONE_REGION = "CN"


class FieldError(ValueError):
    def __init__(self, column: str, message: str) -> None:
        super().__init__(f"{column}: {message}")
        self.column = column
        self.message = message


_CODE = re.compile(r"[0-9]{12}")
_EXCEL_NUMBER = re.compile(r"[0-9.]+[eE][+-]?[0-9]+")
_ID = re.compile(r"[^;；\s]{1,64}")
# Full-width semicolons are what a Chinese input method types.
_LIST_SPLIT = re.compile(r"[;；]")

_LEVELS = {level.value: level for level in AreaLevel}
_KINDS = {kind.value: kind for kind in DeviceKind}
_ROLES = {role.value: role for role in Role}
_CHANNELS = {channel.value: channel for channel in sorted(PERSON_CHANNELS)}


def split_list(value: str) -> list[str]:
    """The items of a ``;``-separated field, stripped, empty items dropped."""
    if ";" not in value and "；" not in value:
        return [value] if value else []
    return [item for item in (part.strip() for part in _LIST_SPLIT.split(value)) if item]


def parse_code(column: str, value: str) -> str:
    if _CODE.fullmatch(value):
        return value
    if not value:
        raise FieldError(column, "required")
    hint = ""
    if _EXCEL_NUMBER.fullmatch(value):
        hint = " (a spreadsheet turned it into a number: format the column as text)"
    raise FieldError(column, f"{value!r} is not a 12-digit area code{hint}")


def parse_id(column: str, value: str) -> str:
    if _ID.fullmatch(value):
        return value
    if not value:
        raise FieldError(column, "required")
    raise FieldError(column, f"{value!r} is not an id: use up to 64 characters, no spaces or ';'")


def parse_flag(column: str, value: str) -> bool:
    word = value.lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise FieldError(column, f"{value!r} is not yes or no (write 1/0, true/false, yes/no or 是/否)")


def _required(column: str, value: str) -> str:
    if not value:
        raise FieldError(column, "required")
    return value


def parse_roles(value: str) -> int:
    mask = 0
    for name in split_list(value):
        role = _ROLES.get(name.lower())
        if role is None:
            raise FieldError("roles", f"{name!r} is not a role (one of {', '.join(_ROLES)})")
        mask |= role.bit
    return mask


def parse_channels(value: str) -> tuple[Channel, ...]:
    channels: dict[Channel, None] = {}
    for name in split_list(value):
        channel = _CHANNELS.get(name.lower())
        if channel is None:
            raise FieldError(
                "preferred_channels", f"{name!r} is not a channel (one of {', '.join(_CHANNELS)})"
            )
        channels[channel] = None
    return tuple(channels)


class PhoneParser:
    """Validates numbers with phonenumbers and returns them in E.164.

    ``phonenumbers.parse`` costs about 35 µs a number, ``is_valid_number`` about 12 µs. For the
    plain-digit form almost every directory uses (``13812345678``, ``+8613812345678``) the parse
    result is fully determined, so it is built directly and only ``is_valid_number`` runs; the
    fast path stands aside whenever the region's international or national prefix rules could
    apply, and the tests compare it with ``phonenumbers.parse`` across every prefix. Results are
    cached by the raw text, since families and offices share numbers.
    """

    def __init__(self, region: str = DEFAULT_PHONE_REGION, cache_size: int = 1 << 16) -> None:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
        if metadata is None:
            raise ValueError(f"unknown phone region {region!r}")
        self.region = region
        self._country_code = int(metadata.country_code or 0)
        self._country_digits = str(self._country_code)
        self._international_prefix = re.compile(metadata.international_prefix or "(?!)")
        self._national_prefix = re.compile(metadata.national_prefix_for_parsing or "(?!)")
        self.number = functools.lru_cache(maxsize=cache_size)(self._number)

    def parse_field(self, value: str) -> tuple[str, ...]:
        """The ``phones`` column: ``;``-separated numbers, duplicates dropped, order kept."""
        numbers: dict[str, None] = {}
        for raw in split_list(value):
            e164 = self.number(raw)
            if e164 is None:
                raise FieldError("phones", f"{raw!r} is not a valid phone number")
            numbers[e164] = None
        return tuple(numbers)

    def _number(self, raw: str) -> str | None:
        """E.164 of a valid number, None for anything else."""
        number = self._fast_parse(raw)
        if number is None:
            try:
                number = phonenumbers.parse(raw, self.region)
            except phonenumbers.NumberParseException:
                return None
        if not phonenumbers.is_valid_number(number):
            return None
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

    def _fast_parse(self, raw: str) -> phonenumbers.PhoneNumber | None:
        if raw.startswith("+"):
            if not raw.startswith(self._country_digits, 1):
                return None
            national = raw[1 + len(self._country_digits) :]
        else:
            if raw.startswith(self._country_digits) or self._international_prefix.match(raw):
                return None
            national = raw
        if (
            not (7 <= len(national) <= 15 and national.isascii() and national.isdigit())
            or national[0] == "0"
            or self._national_prefix.match(national)
        ):
            return None
        return phonenumbers.PhoneNumber(
            country_code=self._country_code, national_number=int(national)
        )


# -- parse: one row on its own. Fields arrive stripped, in the file's canonical column order.


def parse_area(fields: list[str]) -> AreaRecord:
    code_raw, name, level_raw, parent_raw = fields
    code = parse_code("code", code_raw)
    _required("name", name)
    level = _LEVELS.get(level_raw.lower())
    if level is None:
        if not level_raw:
            raise FieldError("level", "required")
        raise FieldError("level", f"{level_raw!r} is not a level (one of {', '.join(_LEVELS)})")
    parent = parse_code("parent_code", parent_raw) if parent_raw else None
    return AreaRecord(code, name, level, parent)


def parse_grid(fields: list[str]) -> GridRecord:
    id_raw, village_raw, name = fields
    return GridRecord(parse_id("id", id_raw), parse_code("village_code", village_raw), name)


def parse_household(fields: list[str]) -> HouseholdRecord:
    """The village code is left empty: it comes from the grid (see :func:`check_household`)."""
    id_raw, grid_raw, address = fields
    return HouseholdRecord(parse_id("id", id_raw), parse_id("grid_id", grid_raw), "", address)


def parse_person(fields: list[str], phones: PhoneParser) -> PersonRecord:
    """The village code may be empty when a household is given (see :func:`check_person`)."""
    (
        id_raw,
        name,
        phones_raw,
        household_raw,
        village_raw,
        roles_raw,
        vulnerable_raw,
        lives_alone_raw,
        channels_raw,
        grids_raw,
    ) = fields
    person_id = parse_id("id", id_raw)
    _required("name", name)
    numbers = phones.parse_field(phones_raw) if phones_raw else ()
    household = parse_id("household_id", household_raw) if household_raw else None
    if village_raw:
        village = parse_code("village_code", village_raw)
    elif household is None:
        raise FieldError("village_code", "required when household_id is empty")
    else:
        village = ""
    roles = parse_roles(roles_raw) if roles_raw else 0
    grids: tuple[str, ...] = ()
    if grids_raw:
        grids = tuple(dict.fromkeys(parse_id("grids", g) for g in split_list(grids_raw)))
        if grids and not roles & Role.GRID_MEMBER.bit:
            raise FieldError("grids", "only a person with the grid_member role can serve grids")
    return PersonRecord(
        person_id,
        name,
        numbers,
        household,
        village,
        roles,
        parse_flag("vulnerable", vulnerable_raw),
        parse_flag("lives_alone", lives_alone_raw),
        parse_channels(channels_raw) if channels_raw else (),
        grids,
    )


def parse_device(fields: list[str]) -> DeviceRecord:
    id_raw, kind_raw, name, adapter, address, area_raw, serves_raw = fields
    device_id = parse_id("id", id_raw)
    kind = _KINDS.get(kind_raw.lower())
    if kind is None:
        if not kind_raw:
            raise FieldError("kind", "required")
        raise FieldError("kind", f"{kind_raw!r} is not a device kind (one of {', '.join(_KINDS)})")
    _required("adapter", adapter)
    _required("address", address)
    area = parse_code("area_code", area_raw)
    serves = tuple(dict.fromkeys(parse_code("serves", c) for c in split_list(serves_raw)))
    return DeviceRecord(device_id, kind, name, adapter, address, area, serves or (area,))


# -- check: the row against the directory (the store plus rows accepted before it).


def _village(column: str, code: str, areas: Mapping[str, AreaLevel]) -> None:
    level = areas.get(code)
    if level is None:
        raise FieldError(column, f"unknown area {code!r}")
    if level is not AreaLevel.VILLAGE:
        raise FieldError(column, f"{code!r} is a {level.value}, not a village")


def check_area(record: AreaRecord, areas: Mapping[str, AreaLevel], top: AreaLevel | None) -> None:
    """``top``: the highest level of any area without a parent so far, if there is one."""
    rank = AREA_LEVEL_RANK[record.level]
    if record.parent_code is None:
        if top is not None and AREA_LEVEL_RANK[top] < rank:
            raise FieldError(
                "parent_code",
                f"required: only the top of the directory may have no parent, and there is "
                f"already a {top.value} without one",
            )
        return
    parent_level = areas.get(record.parent_code)
    if parent_level is None:
        raise FieldError(
            "parent_code",
            f"unknown area {record.parent_code!r} (a parent must come before its children)",
        )
    if AREA_LEVEL_RANK[parent_level] >= rank:
        raise FieldError(
            "parent_code",
            f"{record.parent_code!r} is a {parent_level.value}, not above a {record.level.value}",
        )


def check_grid(record: GridRecord, areas: Mapping[str, AreaLevel]) -> None:
    _village("village_code", record.village_code, areas)


def check_household(record: HouseholdRecord, grid_villages: Mapping[str, str]) -> HouseholdRecord:
    village = grid_villages.get(record.grid_id)
    if village is None:
        raise FieldError("grid_id", f"unknown grid {record.grid_id!r}")
    return record._replace(village_code=village)


def check_person(
    record: PersonRecord,
    household_villages: Mapping[str, str],
    grids: Container[str],
    areas: Mapping[str, AreaLevel],
) -> PersonRecord:
    if record.household_id is not None:
        village = household_villages.get(record.household_id)
        if village is None:
            raise FieldError("household_id", f"unknown household {record.household_id!r}")
        if not record.village_code:
            record = record._replace(village_code=village)
        elif record.village_code != village:
            raise FieldError(
                "village_code",
                f"{record.village_code!r} does not match household {record.household_id!r}, "
                f"which is in village {village!r}",
            )
    else:
        _village("village_code", record.village_code, areas)
    for grid in record.grids:
        if grid not in grids:
            raise FieldError("grids", f"unknown grid {grid!r}")
    return record


def check_device(record: DeviceRecord, areas: Mapping[str, AreaLevel]) -> None:
    if record.area_code not in areas:
        raise FieldError("area_code", f"unknown area {record.area_code!r}")
    for code in record.serves:
        if code not in areas:
            raise FieldError("serves", f"unknown area {code!r}")
