"""What a duty officer submits: one model for JSON bodies and for parsed CAP 1.2 messages."""

from __future__ import annotations

import enum
import re
from datetime import datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
)

from dispatcher.domain import Level, MsgType, Status

_AREA_CODE = re.compile(r"^\d{6}(\d{6})?$")


def normalise_area_code(code: str) -> str:
    """6-digit GB2260 codes (county and above) become 12-digit statistical codes."""
    code = code.strip()
    if not _AREA_CODE.match(code):
        raise ValueError(
            f"{code!r} is not an area code: use a 12-digit statistical code or a 6-digit "
            "GB2260 code"
        )
    return code if len(code) == 12 else code + "000000"


AreaCode = Annotated[str, AfterValidator(normalise_area_code)]


class Urgency(enum.StrEnum):
    IMMEDIATE = "Immediate"
    EXPECTED = "Expected"
    FUTURE = "Future"
    PAST = "Past"
    UNKNOWN = "Unknown"


class Certainty(enum.StrEnum):
    OBSERVED = "Observed"
    LIKELY = "Likely"
    POSSIBLE = "Possible"
    UNLIKELY = "Unlikely"
    UNKNOWN = "Unknown"


class Category(enum.StrEnum):
    GEO = "Geo"
    MET = "Met"
    SAFETY = "Safety"
    SECURITY = "Security"
    RESCUE = "Rescue"
    FIRE = "Fire"
    HEALTH = "Health"
    ENV = "Env"
    TRANSPORT = "Transport"
    INFRA = "Infra"
    CBRNE = "CBRNE"
    OTHER = "Other"


#: CAP forbids whitespace, commas and "<" / "&" in identifiers and senders.
CapToken = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\s,<&]+$")]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200)]
LongText = Annotated[str, StringConstraints(max_length=4000)]


class WarningInput(BaseModel):
    """A new warning as submitted (JSON) or parsed from CAP. Area codes are normalised to 12
    digits. Checks that need the store or the clock (unknown areas, expiry in the past) are
    made by :mod:`dispatcher.warnings`."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    level: Level
    event: ShortText
    headline: ShortText
    description: LongText = ""
    instruction: LongText = ""
    area_codes: list[AreaCode] = Field(min_length=1, max_length=5000)
    area_desc: Annotated[str, StringConstraints(max_length=1000)] = ""
    expires: AwareDatetime | None = None
    status: Status = Status.ACTUAL
    msg_type: MsgType = MsgType.ALERT
    #: CAP references, each "sender,identifier,sent" (Update and Cancel only).
    references: list[Annotated[str, StringConstraints(min_length=5, max_length=500)]] = Field(
        default_factory=list, max_length=100
    )
    identifier: CapToken | None = None
    sender: CapToken | None = None
    sent: AwareDatetime | None = None
    urgency: Urgency = Urgency.IMMEDIATE
    certainty: Certainty = Certainty.LIKELY
    category: Category = Category.MET
    language: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")] = (
        "zh-CN"
    )
    note: Annotated[str, StringConstraints(max_length=1000)] = ""
    audio_url: (
        Annotated[str, StringConstraints(pattern=r"^https?://\S+$", max_length=1000)] | None
    ) = None
    audio_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None


class WarningChange(BaseModel):
    """The body of an update: the fields that change (the rest are carried over)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    level: Level | None = None
    event: ShortText | None = None
    headline: ShortText | None = None
    description: LongText | None = None
    instruction: LongText | None = None
    area_codes: list[AreaCode] | None = Field(default=None, min_length=1, max_length=5000)
    area_desc: Annotated[str, StringConstraints(max_length=1000)] | None = None
    expires: AwareDatetime | None = None
    urgency: Urgency | None = None
    certainty: Certainty | None = None
    note: Annotated[str, StringConstraints(max_length=1000)] | None = None


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    note: Annotated[str, StringConstraints(max_length=1000)] = ""


def cap_reference(sender: str, identifier: str, sent: datetime) -> str:
    """A CAP <references> entry for a message."""
    return f"{sender},{identifier},{format_cap_datetime(sent)}"


def format_cap_datetime(value: datetime) -> str:
    """CAP dateTime: seconds precision and an explicit offset; CAP 1.2 writes UTC as "-00:00"."""
    text = value.replace(microsecond=0).isoformat()
    return text[:-6] + "-00:00" if text.endswith("+00:00") else text
