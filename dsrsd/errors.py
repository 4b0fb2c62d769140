"""The one exception type users see: a clear, one-line message about their input."""


class DsrsdError(ValueError):
    """Bad input or configuration. The CLI prints ``error: <message>`` and exits with code 2."""
