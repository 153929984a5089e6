"""`Record`: a small immutable value, declared like a frozen dataclass, for the start-up path.

    class Rule(Record):
        table: str
        args: tuple[str, ...] = ()
        labels: dict = Default(dict)   # a fresh dict per instance, like field(default_factory=dict)

The annotated class attributes are the fields, in order (a subclass's fields follow its base's), and
their values the defaults. Instances compare and hash by value, refuse assignment, and have
`replace(record, **changes)`, `fields(record)` and `asdict(record)` as dataclasses has.

Not @dataclass: importing dataclasses pulls in inspect, ast and dis, and each decorated class is
generated code compiled at import time (~6 ms for the 70-field SidecarConfig alone). Both sit on the
path between `exec` and Envoy's spawn (the sidecar) and in every pod's init container (istio-iptables).
Pure: standard library only, and not even typing.
"""
from __future__ import annotations

TYPE_CHECKING = False  # annotations only; typing is not imported at run time (start-up cost)
if TYPE_CHECKING:
    from typing import Any, Callable, TypeVar

    R = TypeVar("R", bound="Record")


class Default:
    """A default made anew for each instance (a mutable one: `Default(dict)`, `Default(list)`)."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make

    def __repr__(self) -> str:
        return f"Default({getattr(self.make, '__name__', self.make)})"


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
                default = getattr(type(self), key)
                values[key] = default.make() if isinstance(default, Default) else default
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
        return hash(self._values())  # TypeError when a field holds a dict, as for a frozen dataclass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={self.__dict__[k]!r}' for k in self._fields)})"


def fields(record: Record | type[Record]) -> tuple[str, ...]:
    """The field names, in declaration order."""
    return record._fields


def asdict(record: Record) -> dict[str, Any]:
    """{field: value} (shallow: nested records and containers are not copied)."""
    return {key: record.__dict__[key] for key in record._fields}


def replace(record: R, **changes: Any) -> R:
    """A copy of `record` with `changes` applied (unknown names raise TypeError)."""
    return type(record)(**{**asdict(record), **changes})
