"""Program errors. Findings about user input are `Diagnostic`s, not exceptions."""


class NautheraError(Exception):
    """Root of every error Nauthera raises on purpose; the CLI maps it to exit code 2."""


class ToolNotFoundError(NautheraError):
    """An external engine (opa, regal, gator) is not installed where we look for it."""


class ToolFailedError(NautheraError):
    """An external engine ran but failed in a way that is not a policy finding."""


class InputError(NautheraError):
    """A path or file given on the command line cannot be read."""


class NotABundleError(InputError):
    """A file given as a bundle is not a Nauthera bundle (not a .tar.gz, or not one the compiler wrote)."""


class OutputError(NautheraError):
    """The output folder (`--out`) cannot be written."""
