"""The one exception type that reaches the user as a single clear line."""


class AdvplugError(Exception):
    """A problem with the user's input or environment, stated with how to fix it.

    The CLI prints ``advplug: error: <message>`` and exits with status 2; the Python
    API lets it propagate. Anything else that escapes is a bug in advplug or a plugin.
    """


def warn(message: str) -> None:
    """One ``advplug: warning: ...`` line on stderr: something the user should know that does
    not stop the run (the report says it too where it concerns a number)."""
    import sys

    from .distributed import current

    if current().is_main:  # under torchrun every process would say the same
        print(f"advplug: warning: {message}", file=sys.stderr, flush=True)
