"""The errors fusionrank raises for problems a user can fix (input, config, a missing
upstream output). The CLI prints them as one line and exits with status 1. This
module imports nothing, so every other module can use it."""


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or invalid."""


class PrivacyError(ConfigError):
    """Pseudonymisation is on but its salt is missing or too weak."""


class InputError(ValueError):
    """The raw input cannot be read as the data contract describes."""


class StageError(RuntimeError):
    """A stage cannot run (missing upstream output, bad input, failed check)."""


class ModelError(RuntimeError):
    """A model folder is missing or cannot be loaded."""


class StorageError(RuntimeError):
    """A table could not be read or written."""


class IndexError_(RuntimeError):
    """The index could not be built, or failed its self-check."""


# What the CLI and the job entry points report as one line (exit status 1).
USER_ERRORS = (ConfigError, InputError, StageError, ModelError, StorageError, IndexError_)
