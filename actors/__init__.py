"""A small, general actor runtime on trio: bounded mailboxes, addresses, ask, supervision.

Imports only trio. An actor is a task that owns its state and receives from a bounded
`Mailbox`; others reach it through its `Address`; questions are answered on a `Reply`.
"""

from .address import Address
from .ask import Answer, Reply, ask
from .errors import ActorError, ActorStopped, AskTimeout, MailboxFull
from .mailbox import Mailbox, MailboxStatistics
from .supervisor import (
    STOP_ON_CRASH,
    Decision,
    RestartPolicy,
    Supervisor,
    SupervisorStatistics,
    open_supervisor,
)

__all__ = [
    "STOP_ON_CRASH",
    "ActorError",
    "ActorStopped",
    "Address",
    "Answer",
    "AskTimeout",
    "Decision",
    "Mailbox",
    "MailboxFull",
    "MailboxStatistics",
    "Reply",
    "RestartPolicy",
    "Supervisor",
    "SupervisorStatistics",
    "ask",
    "open_supervisor",
]
