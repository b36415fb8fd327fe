"""quick_init: the same frozen dataclass, made through its slots' descriptors."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field

import pytest

from orchestrator.run.events import ClearFinished, ClearRetrying, ClearStarted, TokenWaiting
from orchestrator.run.values import quick_init
from orchestrator.wolkvox.client import Answer, HttpRequest, HttpResponse


def _point_class() -> type:
    @dataclass(frozen=True, slots=True)
    class Point:
        x: int
        y: int = 7
        tags: list[str] = field(default_factory=list)

    return Point


Plain = _point_class()
Quick = quick_init(_point_class())


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((1,), {}),
        ((1, 2), {}),
        ((1, 2, ["a"]), {}),
        ((), {"x": 1, "tags": ["b"]}),
        ((1,), {"y": 3}),
    ],
)
def test_quick_init_fills_the_fields_as_the_dataclass_does(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    plain, quick = Plain(*args, **kwargs), Quick(*args, **kwargs)
    assert dataclasses.astuple(quick) == dataclasses.astuple(plain)
    assert repr(quick).split("(", 1)[1] == repr(plain).split("(", 1)[1]


def test_quick_init_calls_the_default_factory_for_each_instance() -> None:
    first, second = Quick(1), Quick(1)
    assert first.tags == [] and first.tags is not second.tags


def test_quick_init_keeps_the_instance_frozen_equal_and_hashable() -> None:
    point = Quick(1, 2, [])
    with pytest.raises(dataclasses.FrozenInstanceError):
        point.x = 5  # type: ignore[attr-defined]
    assert point == Quick(1, 2, []) and point != Quick(2, 2, [])
    assert hash(Quick(1, 2, ())) == hash(Quick(1, 2, ()))


def test_quick_init_refuses_missing_and_unknown_arguments() -> None:
    with pytest.raises(TypeError):
        Quick()
    with pytest.raises(TypeError):
        Quick(1, z=2)
    with pytest.raises(TypeError):
        Quick(1, x=2)


def test_quick_init_keeps_the_signature() -> None:
    plain = inspect.signature(Plain.__init__).parameters
    quick = inspect.signature(Quick.__init__).parameters
    assert list(quick) == list(plain)
    assert quick["y"].default == 7
    assert Quick.__init__.__qualname__.endswith("Point.__init__")


def test_quick_init_refuses_a_class_it_cannot_make_faster() -> None:
    @dataclass(slots=True)
    class Mutable:
        x: int

    @dataclass(frozen=True)
    class NoSlots:
        x: int

    @dataclass(frozen=True, slots=True)
    class KeywordOnly:
        x: int = field(kw_only=True)

    @dataclass(frozen=True, slots=True)
    class NotInInit:
        x: int = field(init=False, default=0)

    @dataclass(frozen=True, slots=True)
    class PostInit:
        x: int

        def __post_init__(self) -> None:
            pass

    class NotADataclass:
        pass

    for cls in (Mutable, NoSlots, KeywordOnly, NotInInit, PostInit, NotADataclass):
        with pytest.raises(TypeError):
            quick_init(cls)


@pytest.mark.parametrize(
    "cls",
    [Answer, HttpRequest, HttpResponse, TokenWaiting, ClearStarted, ClearRetrying, ClearFinished],
)
def test_value_classes_made_per_clear_take_their_fields_in_order(cls: type) -> None:
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    fields = dataclasses.fields(cls)
    assert [p.name for p in parameters] == [f.name for f in fields]
    for parameter, f in zip(parameters, fields, strict=True):
        if f.default is not dataclasses.MISSING:
            assert parameter.default is f.default
        elif f.default_factory is dataclasses.MISSING:
            assert parameter.default is inspect.Parameter.empty
