"""What a duty officer submits: one model for JSON bodies and for parsed CAP 1.2 messages."""

from __future__ import annotations

import enum
import re
from datetime import datetime
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails

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


#: What a warning needs unless it is a Cancel, which takes them from the warning it cancels.
INFO_REQUIRED = ("level", "event", "headline", "area_codes")

# The JSON Schema form of the model validator below: OpenAPI readers and the fuzzer see that
# these fields are required (and not null) unless msg_type is Cancel.
_INFO_REQUIRED_SCHEMA: dict[str, Any] = {
    "if": {"properties": {"msg_type": {"const": MsgType.CANCEL.value}}, "required": ["msg_type"]},
    "else": {
        "required": list(INFO_REQUIRED),
        "properties": {name: {"not": {"type": "null"}} for name in INFO_REQUIRED},
    },
}


class WarningInput(BaseModel):
    """A new warning as submitted (JSON) or parsed from CAP. Area codes are normalised to 12
    digits. Checks that need the store or the clock (unknown areas, expiry in the past,
    references) are made by :mod:`dispatcher.warning_service`.

    A Cancel may leave out level, event, headline, area codes and the other ``<info>`` fields
    (CAP 1.2 allows a Cancel without ``<info>``); the service fills them from the warning it
    cancels. Every other message type must give :data:`INFO_REQUIRED`."""

    model_config = ConfigDict(
        extra="forbid", str_strip_whitespace=True, json_schema_extra=_INFO_REQUIRED_SCHEMA
    )

    level: Level | None = None
    event: ShortText | None = None
    headline: ShortText | None = None
    description: LongText = ""
    instruction: LongText = ""
    area_codes: list[AreaCode] | None = Field(default=None, min_length=1, max_length=5000)
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

    @model_validator(mode="wrap")
    @classmethod
    def _info_required_unless_cancel(
        cls, data: Any, handler: ModelWrapValidatorHandler[Self]
    ) -> Self:
        """:data:`INFO_REQUIRED` unless msg_type is Cancel, reported as the fields reported it
        when they were required outright: one "Field required" error per field, in field
        order among the other problems, so API and CAP errors still name every field."""
        try:
            warning = handler(data)
        except ValidationError as exc:
            if not isinstance(data, dict) or data.get("msg_type") == MsgType.CANCEL.value:
                raise
            missing = [name for name in INFO_REQUIRED if data.get(name) is None]
            if not missing:
                raise
            try:
                combined = _with_missing(cls, exc, missing, data)
            except (KeyError, TypeError):  # an error pydantic cannot rebuild: report as it was
                raise exc from None
            raise combined from None
        if warning.msg_type is MsgType.CANCEL:
            return warning
        missing = [name for name in INFO_REQUIRED if getattr(warning, name) is None]
        if missing:
            raise _with_missing(cls, None, missing, data)
        return warning


def _with_missing(
    model: type[BaseModel], exc: ValidationError | None, missing: list[str], data: Any
) -> ValidationError:
    """``exc``'s errors plus a "missing" error per name, ordered as the model's fields."""
    errors = [
        InitErrorDetails(type=e["type"], loc=e["loc"], input=e["input"], ctx=e["ctx"])
        if "ctx" in e
        else InitErrorDetails(type=e["type"], loc=e["loc"], input=e["input"])
        for e in (exc.errors() if exc is not None else [])
    ]
    errors += [InitErrorDetails(type="missing", loc=(name,), input=data) for name in missing]
    order = {name: i for i, name in enumerate(model.model_fields)}
    errors.sort(key=lambda e: order.get(str(e["loc"][0]), len(order)) if e["loc"] else -1)
    return ValidationError.from_exception_data(model.__name__, errors)


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
