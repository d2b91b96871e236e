"""Parsing ``--config=FILE:key=value,key=value`` arguments of the config files."""


def parse(arg: str | None, allowed: dict) -> dict:
    """Returns ``allowed`` (name -> default) updated by ``arg``; values take the default's type."""
    out = dict(allowed)
    if not arg:
        return out
    for item in arg.split(","):
        if "=" not in item:
            raise ValueError(f"config argument {item!r} is not key=value")
        key, value = item.split("=", 1)
        if key not in allowed:
            raise ValueError(f"unknown config argument {key!r}; allowed: {sorted(allowed)}")
        default = allowed[key]
        out[key] = value if default is None or isinstance(default, str) else type(default)(value)
    return out
