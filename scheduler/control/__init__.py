"""Human control (R3): alerts, pause and decisions, overdraft, critical sections, control socket,
webhook notifications.

May import ``core``, ``config``, ``store``, ``budget`` and ``policies``.
"""

from scheduler.control._alerts import AlertFlags as AlertFlags
from scheduler.control._alerts import AlertRuntime as AlertRuntime
from scheduler.control._alerts import AlertStatistics as AlertStatistics
from scheduler.control._answer import answer_command as answer_command
from scheduler.control._answer import decide_commands as decide_commands
from scheduler.control._decision import Decision as Decision
from scheduler.control._overdraft import OverdraftLedger as OverdraftLedger
from scheduler.control._overdraft import OverdraftStatistics as OverdraftStatistics
from scheduler.control._pause import PauseController as PauseController
from scheduler.control._pause import PauseInfo as PauseInfo
from scheduler.control._pause import PauseStatistics as PauseStatistics
from scheduler.control._server import ControlServer as ControlServer
from scheduler.control._webhooks import Notification as Notification
from scheduler.control._webhooks import Webhooks as Webhooks

__all__ = [
    "AlertFlags",
    "AlertRuntime",
    "AlertStatistics",
    "ControlServer",
    "Decision",
    "Notification",
    "OverdraftLedger",
    "OverdraftStatistics",
    "PauseController",
    "PauseInfo",
    "PauseStatistics",
    "Webhooks",
    "answer_command",
    "decide_commands",
]

from scheduler.core._public import publish as _publish

_publish(__name__, __all__, globals())
