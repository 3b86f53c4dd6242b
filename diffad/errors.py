"""The exceptions a user can cause. The CLI prints their message and exits non-zero."""


class DiffadError(Exception):
    """Base class: the message says what is wrong and how to fix it."""


class DataError(DiffadError):
    """A dataset folder, image, mask or index is missing, unreadable or inconsistent."""


class ConfigError(DiffadError):
    """An argument, setting or saved configuration is invalid."""


class OutputExistsError(DiffadError):
    """A command would overwrite files it did not make."""
