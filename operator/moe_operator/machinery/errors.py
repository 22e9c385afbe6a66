"""What a reconcile function may raise to tell the workers how to retry; the machinery's whole vocabulary."""


class StaleRead(Exception):
    """An object changed after it was read: reconcile again at once, from fresh reads."""


class NotLeader(Exception):
    """A write this replica may not make: it does not lead (any more). Nothing was sent."""


class Refused(Exception):
    """The API server refused a write that retrying it unchanged cannot fix: back off, and say why."""
