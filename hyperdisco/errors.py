"""User-facing errors: each carries a one-line message the CLI prints before exiting non-zero."""


class HyperdiscoError(Exception):
    """An error caused by the user's input or environment, reported as one line, never a traceback."""

    exit_code = 2


class ImageError(HyperdiscoError):
    """A kernel, initramfs or disk image is missing or malformed."""


class ConfigError(HyperdiscoError):
    """A configuration value or file is invalid."""


class EngineError(HyperdiscoError):
    """The CPU engine cannot run on this host (wrong library build, missing compiler...)."""
