"""The runtime's own errors: what a sender learns when a mailbox cannot take a message."""


class ActorError(Exception):
    """Base of every error raised by the actor runtime."""


class MailboxFull(ActorError):
    """The mailbox is at capacity; the put site decides what that means (its policy)."""


class ActorStopped(ActorError):
    """The actor behind an address has stopped receiving; the message was not delivered."""


class AskTimeout(ActorError):
    """A question got no answer within its deadline."""
