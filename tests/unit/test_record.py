"""agent.iptables.record.Record: fields, defaults, positional and keyword construction, immutability,
value equality and hashing, repr, subclass field order; and that type checkers are told about it."""
from __future__ import annotations

import pytest

from agent.iptables.record import Record


class Point(Record):
    x: int
    y: int = 0
    tags: tuple[str, ...] = ()


class Point3(Point):
    z: int = 9


def test_fields_in_declaration_order_and_defaults():
    assert Point._fields == ("x", "y", "tags")
    assert Point(1) == Point(1, 0, ()) == Point(x=1)
    assert (Point(1, 2).x, Point(1, 2).y) == (1, 2)


def test_subclass_fields_follow_the_base():
    assert Point3._fields == ("x", "y", "tags", "z")
    assert Point3(1, z=3).z == 3 and Point3(1).z == 9


@pytest.mark.parametrize("args, kwargs, message", [
    ((), {}, "missing argument 'x'"),
    ((1, 2, (), 4), {}, "at most 3 positional"),
    ((1,), {"x": 2}, "unexpected or repeated argument 'x'"),
    ((1,), {"w": 2}, "unexpected or repeated argument 'w'"),
])
def test_bad_construction_is_a_type_error(args, kwargs, message):
    with pytest.raises(TypeError, match=message):
        Point(*args, **kwargs)


def test_immutable():
    p = Point(1)
    with pytest.raises(AttributeError, match="immutable"):
        p.x = 2
    with pytest.raises(AttributeError, match="immutable"):
        del p.x
    assert p.x == 1


def test_equality_and_hash_by_value_and_type():
    assert Point(1, 2) == Point(1, 2) and Point(1, 2) != Point(2, 1)
    assert Point(1) != Point3(1)  # a subclass instance is a different value, as for dataclasses
    assert len({Point(1, 2), Point(1, 2), Point(3)}) == 2
    with pytest.raises(TypeError):
        hash(Point([1]))  # an unhashable field makes the record unhashable


def test_repr():
    assert repr(Point(1, tags=("a",))) == "Point(x=1, y=0, tags=('a',))"


def test_vars_gives_the_fields():
    assert vars(Point(1, 2)) == {"x": 1, "y": 2, "tags": ()}  # istio-iptables logs its config so


def test_type_checkers_see_a_dataclass_transform():
    assert Record.__dataclass_transform__["eq_default"] is True
    assert Record.__dataclass_transform__["kwargs"] == {"frozen_default": True}
