"""Command-line flags: ``--amp false`` reaches a bundle as the string ``'false'`` (Fire only converts ``False``),
which Python treats as true."""

from __future__ import annotations

from ..errors import SettingError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", "none", "null", ""}


def as_bool(value: object, name: str = "flag") -> bool:
    """Interpret a config or command-line value as a boolean: every boolean setting goes through this.

    Args:
        value: a bool, a number, None, or a string such as ``true``/``false``/``1``/``0``/``yes``/``no``.
        name: the setting's name, for the error message.

    Raises:
        SettingError: (a ``ValueError``) naming the setting when the value is not a recognisable boolean.
    """
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise SettingError(f"{name} must be true or false, got {value!r}.")
