"""Frozen value objects that are cheap to make: several are made for every clear.

A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``
(its own ``__setattr__`` refuses), about 70 ns a field; the answers, requests and
events of one clear have some 25 fields. :func:`quick_init` gives a frozen,
slotted dataclass an ``__init__`` that fills the slots through their descriptors
instead, at a third of the cost. Everything else (frozenness, equality, repr,
hashing) stays the dataclass's own.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

_T = TypeVar("_T")

#: Stands for "not given" where a field's default comes from a factory.
_NOT_GIVEN: Any = object()


def quick_init(cls: type[_T]) -> type[_T]:
    """Replace the ``__init__`` of ``cls``, a frozen slotted dataclass, by a faster one.

    The new ``__init__`` takes the same arguments, positional or by keyword, with the
    same defaults, and calls default factories for fields not given. Fields that are
    keyword-only or left out of ``__init__``, and a ``__post_init__``, are refused
    (``TypeError``): the dataclass's own ``__init__`` handles those.
    """
    params = dataclasses.fields(cls)  # type: ignore[arg-type]  # TypeError: not a dataclass
    if not cls.__dataclass_params__.frozen or "__slots__" not in cls.__dict__:  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__} is not a frozen, slotted dataclass")
    if hasattr(cls, "__post_init__") or any(not f.init or f.kw_only for f in params):
        raise TypeError(f"{cls.__name__} needs the dataclass's own __init__")
    namespace: dict[str, Any] = {"_NOT_GIVEN": _NOT_GIVEN}
    arguments, lines = [], []
    for i, field in enumerate(params):
        name = field.name
        namespace[f"_set{i}"] = cls.__dict__[name].__set__  # the slot's descriptor
        parameter, value = name, name
        if field.default is not dataclasses.MISSING:
            namespace[f"_default{i}"] = field.default
            parameter = f"{name}=_default{i}"
        elif field.default_factory is not dataclasses.MISSING:
            namespace[f"_factory{i}"] = field.default_factory
            parameter = f"{name}=_NOT_GIVEN"
            value = f"_factory{i}() if {name} is _NOT_GIVEN else {name}"
        arguments.append(parameter)
        lines.append(f"    _set{i}(self, {value})\n")
    source = f"def __init__(self, {', '.join(arguments)}):\n{''.join(lines) or '    pass'}"
    exec(source, namespace)  # built only from field names, as dataclasses does
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
