"""``[adapters.<name>.settings]`` of a ``beidou_rdss`` instance."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from adapters.beidou_rdss.sentences import COMM_LEVEL_BITS
from adapters.serial_link.settings import SerialPortSettings
from dispatcher.durations import Seconds


class BeidouRdssSettings(SerialPortSettings):
    """The terminal's port and how Tocsin sends through it. What the card allows (its user id,
    service interval and communication level) is read from the terminal ($CCICA) at every
    (re)open; the overrides below replace what the card says, for a terminal that reports it
    wrong."""

    #: BeiDou-2 RDSS terminals default to 115200 (older BeiDou-1 ones to 19200).
    baudrate: int = 115200
    #: How the content is written: "mixed" (混发: GB18030 after the A4 marker; Chinese, digits
    #: and punctuation as they are) or "chinese" (汉字: GB2312 double-byte only, ASCII widened).
    encoding: Literal["mixed", "chinese"] = "mixed"
    #: 通信类别: "normal" (普通) or "urgent" (特快, which not every card may use).
    comm_type: Literal["normal", "urgent"] = "normal"
    #: Seconds between two transmissions, instead of the card's service interval (服务频度).
    send_interval: Seconds | None = Field(None, ge=0, le=3600)
    #: Added to the interval before the next transmission: the terminal's clock and ours
    #: differ by a second or two, and a transmission refused for being early costs a round trip.
    interval_margin: Seconds = Field(1.0, ge=0, le=60)
    #: The card's communication level (通信等级, 1–4), instead of the card's own.
    comm_level: int | None = Field(None, ge=1, le=max(COMM_LEVEL_BITS))
    #: Message length in bits, instead of the one the level gives (a vendor's longer limit).
    max_message_bits: int | None = Field(None, ge=64, le=14_000)
    #: The longest send() waits for the next transmission slot; a later slot answers Retry with
    #: the seconds left, so the engine's claim is not held for a whole interval.
    pacing_wait: Seconds = Field(5.0, ge=0, le=120)
    #: A send() stops starting transmissions after this long and answers Retry for the rest of
    #: its batch (stay well under the instance's send_timeout).
    batch_budget: Seconds = Field(20.0, gt=0, le=600)
    #: How often the terminal reports its beam power ($CCRMO,BSI); 0: never (probe asks once).
    beam_report_interval: int = Field(10, ge=0, le=3600)
    #: After "no signal" (功率未锁定), the pause before the next attempt.
    no_signal_retry: Seconds = Field(30.0, gt=0, le=3600)
    #: After a suppression by the centre, radio silence or a missing card, the pause before the
    #: next attempt.
    suppressed_retry: Seconds = Field(300.0, gt=0, le=86_400)
    #: Replies that confirm a warning, compared after normalising (NFKC, no spaces or
    #: punctuation, case-folded): "１", "收到！" and " y " all count.
    confirm_words: tuple[str, ...] = ("1", "收到", "Y", "yes", "是", "确认", "好")
    #: How long after its warning expires a sent message is still matched with a reply.
    reply_window: Seconds = Field(3600.0, ge=0, le=7 * 86_400)
    #: How long probe() listens for the beam report when it opens the port itself.
    probe_listen: Seconds = Field(2.0, gt=0, le=60)

    @model_validator(mode="after")
    def _words(self) -> Self:
        if not any(word.strip() for word in self.confirm_words):
            raise ValueError("confirm_words needs at least one word")
        return self

    def send_time_needed(self) -> tuple[float, str]:
        """What one send() may take: the batch's budget (config checks send_timeout)."""
        return self.batch_budget, "batch_budget"
