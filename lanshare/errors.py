"""Every lanshare exception derives from :class:`Error`, so callers can catch one type."""


class Error(Exception):
    """Base of lanshare's exceptions; its message is meant for a person to act on."""


class UsageError(Error):
    """Bad command-line usage or configuration: the CLI exits with status 2."""


class CorruptObject(Error):
    """An object's bytes do not match its name or cannot be parsed."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class MissingObject(Error):
    """An object that should be in the repository is not there."""


class SignatureError(Error):
    """A commit is unsigned, signed by an unknown key, or its signature does not verify."""


class PullError(Error):
    """A pull could not complete; the message names what failed and why, source by source.

    Here rather than in :mod:`lanshare.pull` so that ``lanshare pull`` can catch it, when the
    daemon pulled, without importing the pull engine."""
