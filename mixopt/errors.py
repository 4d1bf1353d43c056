"""The one exception type for user errors: the CLI prints it on one line and exits 2."""


class MixoptError(Exception):
    """A problem with the user's input, stated with its fix."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}; {fix}" if fix else problem)

    def one_line(self) -> str:
        return " ".join(str(self).split())
