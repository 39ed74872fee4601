"""The words people receive: one rendering for every adapter, so an SMS, a call and a visit
task say the same thing. Test and Exercise warnings say so first — never confused with Actual."""

from __future__ import annotations

from datetime import timedelta, timezone

from dispatcher.adapter import WarningContent
from dispatcher.domain import Audience, Channel, Level, MsgType, Status

#: Rural China reads local time.
_CHINA = timezone(timedelta(hours=8), "Asia/Shanghai")

LEVEL_NAMES = {
    Level.RED: "红色预警",
    Level.ORANGE: "橙色预警",
    Level.YELLOW: "黄色预警",
    Level.BLUE: "蓝色预警",
}
_STATUS_PREFIX = {
    Status.TEST: "【测试，非真实预警】",
    Status.EXERCISE: "【演练，非真实预警】",
    Status.DRAFT: "【草稿】",
    Status.ACTUAL: "",
}
#: How many household ids a visit SMS lists before "and N more".
VISIT_LIST_LIMIT = 30


#: How a person confirms, by channel: a call asks for a key press, a text for a reply.
_CONFIRM = {Channel.VOICE.value: "确认收到请按1。"}
_CONFIRM_BY_REPLY = "收到请回复1。"


def render_text(
    warning: WarningContent,
    *,
    audience: str,
    households: tuple[str, ...] = (),
    channel: str | None = None,
) -> str:
    prefix = _STATUS_PREFIX[warning.status]
    level = LEVEL_NAMES[warning.level]
    if warning.msg_type is MsgType.CANCEL:
        return f"{prefix}【解除】{warning.event}预警已解除。{warning.headline}"
    until = warning.expires.astimezone(_CHINA).strftime("%m月%d日%H:%M")
    if audience == Audience.VISIT.value:
        shown = "、".join(households[:VISIT_LIST_LIMIT])
        more = len(households) - VISIT_LIST_LIMIT
        rest = f"等{len(households)}户" if more > 0 else f"共{len(households)}户"
        return (
            f"{prefix}【{level}·入户通知】{warning.headline}。以下住户未确认收到预警，请立即"
            f"入户告知：{shown}（{rest}）。告知后请在系统中逐户确认。"
        )
    instruction = f"{warning.instruction}。" if warning.instruction else ""
    update = "【更新】" if warning.msg_type is MsgType.UPDATE else ""
    if audience == Audience.DEVICE.value:
        # Read aloud by loudspeakers and transmitters: the whole warning, and no reply to ask for.
        description = f"{warning.description}。" if warning.description else ""
        return (
            f"{prefix}【{level}】{update}{warning.headline}。{description}{instruction}"
            f"有效至{until}。"
        ).replace("。。", "。")
    return (
        f"{prefix}【{level}】{update}{warning.headline}。{instruction}有效至{until}。"
        f"{_CONFIRM.get(channel or '', _CONFIRM_BY_REPLY)}"
    )
