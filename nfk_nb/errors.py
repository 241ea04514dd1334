"""Exceptions raised by nfk_nb: one clear sentence, catchable as the builtin they refine."""

from __future__ import annotations


class NFKError(ValueError):
    """Bad input or a computation nfk_nb refuses to run (subclass of ``ValueError``)."""


class NFKTypeError(NFKError, TypeError):
    """An argument of the wrong type (subclass of both ``NFKError`` and ``TypeError``)."""


class NFKMemoryError(NFKError, MemoryError):
    """Work that would not fit in memory; the message names the cheaper alternative."""


class NFKWriteError(NFKError, OSError):
    """A file could not be written (disk full, read-only, no permission); any previous file is intact.

    Subclass of both ``NFKError`` and ``OSError``; ``errno`` and ``strerror`` say why.
    """

    def __str__(self) -> str:  # the sentence, not OSError's "[Errno n] ..." form
        return str(self.args[0]) if self.args else ""
