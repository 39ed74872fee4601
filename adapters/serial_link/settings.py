"""The settings every serial-attached kind shares; a kind's own model subclasses
:class:`SerialPortSettings` (``[adapters.<name>.settings]``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dispatcher.durations import Seconds

#: The rates a UART and a USB serial adapter offer; anything else is a typo.
STANDARD_BAUD_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)


class SerialPortSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The device path. Prefer the stable ``/dev/serial/by-id/usb-…`` link over
    #: ``/dev/ttyUSB0``, whose number changes when devices are plugged in another order.
    port: str = Field(min_length=1)
    baudrate: int = 115200
    #: Seconds one command may take before it counts as unanswered.
    command_timeout: Seconds = Field(default=10.0, gt=0, le=600)
    #: Seconds the port and the device's set-up may take at start.
    open_timeout: Seconds = Field(default=10.0, gt=0, le=600)
    #: The longest pause between attempts to reopen a port that went away.
    reopen_max: Seconds = Field(default=30.0, gt=0, le=600)

    @field_validator("port")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(
                f"{value!r} is not a device path; write the full path, e.g. "
                "/dev/serial/by-id/usb-… or /dev/ttyUSB0"
            )
        return value

    @field_validator("baudrate")
    @classmethod
    def _standard_rate(cls, value: int) -> int:
        if value not in STANDARD_BAUD_RATES:
            rates = ", ".join(str(r) for r in STANDARD_BAUD_RATES)
            raise ValueError(f"{value} is not a standard baud rate ({rates})")
        return value
