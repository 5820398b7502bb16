"""One error family. Everything a user can cause raises an OficinaError whose message is a
single line that names what is wrong; the CLI prints it and exits non-zero, no traceback."""


class OficinaError(Exception):
    """Base class: a user-facing, one-line problem."""


class InvalidOptions(OficinaError):
    """A sampling/runtime parameter is unknown or out of range."""


class ModelNotFound(OficinaError):
    """A name that is neither in the registry nor in the source catalogue."""


class SourceError(OficinaError):
    """A model source could not be fetched or did not verify."""


class FormatError(OficinaError):
    """A file from outside (GGUF, safetensors folder, template, data) is malformed or hostile."""


class ModelfileError(OficinaError):
    """A Modelfile does not parse; the message names the line."""

    def __init__(self, line: int, message: str):
        self.line = line
        super().__init__(f"Modelfile line {line}: {message}")


class RegistryError(OficinaError):
    """A registry operation cannot be done (bad name, missing version, ...)."""
