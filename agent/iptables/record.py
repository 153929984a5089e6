"""`Record`: a small immutable value, declared like a frozen dataclass.

    class Rule(Record):
        table: str
        args: tuple[str, ...] = ()

The annotated class attributes are the fields, in order (a subclass's fields follow its base's), and
their values the defaults. Instances take the fields positionally or by name, compare and hash by
value, refuse assignment, and print as `Rule(table='nat', args=())`. Type checkers see that
constructor through `typing.dataclass_transform`.

Why not @dataclass on this path: agent/iptables/__init__.py (measured by bench/iptables_imports.py).
"""
from __future__ import annotations

from typing import Any, dataclass_transform


@dataclass_transform(eq_default=True, frozen_default=True)
class Record:
    """Immutable value with named fields; see the module docstring."""

    _fields: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__annotations__", {})
        cls._fields = (*cls._fields, *(name for name in own if name not in cls._fields))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        name = type(self).__name__
        if len(args) > len(self._fields):
            raise TypeError(f"{name}() takes at most {len(self._fields)} positional arguments")
        values = dict(zip(self._fields, args))
        for key, value in kwargs.items():
            if key not in self._fields or key in values:
                raise TypeError(f"{name}() got an unexpected or repeated argument {key!r}")
            values[key] = value
        for key in self._fields:
            if key not in values:
                if not hasattr(type(self), key):
                    raise TypeError(f"{name}() missing argument {key!r}")
                values[key] = getattr(type(self), key)
        self.__dict__.update(values)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {key!r}: {type(self).__name__} is immutable")

    def __delattr__(self, key: str) -> None:
        raise AttributeError(f"cannot delete field {key!r}: {type(self).__name__} is immutable")

    def _values(self) -> tuple[Any, ...]:
        return tuple(self.__dict__[key] for key in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._values())  # TypeError when a field holds a list or dict, as for a frozen dataclass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={self.__dict__[k]!r}' for k in self._fields)})"
