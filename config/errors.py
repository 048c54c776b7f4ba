"""The configuration package's error: the one thing a bad configuration raises."""

from __future__ import annotations


class ConfigError(Exception):
    """The configuration is invalid; the message names the key and the reason.

    A plain Exception rather than a ValueError, so that code catching the
    ValueErrors of a library call cannot swallow it by accident.
    """
