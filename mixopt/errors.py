"""The one exception type for user errors: the CLI prints it on one line and exits 2."""


class MixoptError(Exception):
    """A problem with the user's input, stated with its fix."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}; {fix}" if fix else problem)

    def one_line(self) -> str:
        return " ".join(str(self).split())


SHOWN_MAX = 200  # characters of a user's value echoed in a message (a 1 MB cell stays one readable line)


def shown(value) -> str:
    """A value from the user's input as a message echoes it: its repr, cut to SHOWN_MAX characters."""
    text = repr(value)
    return text if len(text) <= SHOWN_MAX else f"{text[:SHOWN_MAX]}... ({len(text):,} characters)"


PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")  # how pydantic words a validator's ValueError/assert


def plain(message: str) -> str:
    """A pydantic validation message as a user reads it: without pydantic's own 'Value error, ' wording."""
    for prefix in PYDANTIC_PREFIXES:
        message = message.removeprefix(prefix)
    return message
