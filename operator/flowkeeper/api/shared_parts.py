"""Equal parts of many specs held once: ten thousand flows made from one template differ in their
queue and their Deployment, while their scaling, health and metrics parts are equal, and each pydantic
model holds a dict and a set of its own (about 6 KB a flow, 60 MB at 10,000 flows).

Specs are frozen (api/v1alpha1.py, ApiModel) so that a part shared by many flows can never be changed
through one of them. A shared part keeps the fields-set of the first spec it came from: nothing in the
operator reads `model_fields_set`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, TypeVar

from pydantic import BaseModel

Model = TypeVar("Model", bound=BaseModel)


class SharedParts:
    def __init__(self, size: int = 4096) -> None:
        # The parts met most recently, at most `size`: the parts many flows share are met again and
        # again and stay; a flow's own parts (its queue, its Deployment) make way.
        self._parts: OrderedDict[tuple, BaseModel] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def share(self, model: Model) -> Model:
        """`model`, each of its sub-models (at any depth) replaced by an equal one seen before."""
        with self._lock:
            return self._share(model)

    def __len__(self) -> int:
        return len(self._parts)

    def _share(self, model: Model) -> Model:
        fields = model.__dict__
        for name, value in fields.items():  # values replaced in place: the dict's size never changes
            if isinstance(value, BaseModel):
                fields[name] = self._one_of(self._share(value))
        return model

    def _one_of(self, part: BaseModel) -> BaseModel:
        try:
            key = _key(part)
            known = self._parts.get(key)
        except TypeError:  # a list or dict field: not hashable, the part stays its own
            return part
        if known is not None:
            self._parts.move_to_end(key)
            return known
        self._parts[key] = part
        if len(self._parts) > self._size:
            self._parts.popitem(last=False)
        return part


def _key(part: BaseModel) -> tuple[Any, ...]:
    """Equal only for parts of one type whose values have the same types too (1, 1.0 and True are
    equal in Python and must not be taken for one another); a list or dict anywhere raises TypeError."""
    return (type(part), tuple((type(v), _key(v) if isinstance(v, BaseModel) else v) for v in part.__dict__.values()))
