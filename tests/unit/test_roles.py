"""Every role's implementations satisfy its Protocol, the Ray one and the in-process one alike,
so the steps and schedules never ask where a role runs."""

from __future__ import annotations

import inspect

import pytest

from alignloop.loop.roles import protocols
from alignloop.loop.roles.judges import JudgeWorkers
from alignloop.loop.roles.local import LocalLearner, LocalRoles
from alignloop.loop.roles.ray_roles import RayLearner, RayRoles
from alignloop.loop.roles.samplers import SamplerReplicas
from alignloop.loop.roles.server_samplers import ServerSamplers

IMPLEMENTATIONS = [
    (protocols.SamplerPool, SamplerReplicas),
    (protocols.Publication, SamplerReplicas),
    (protocols.SamplerPool, ServerSamplers),
    (protocols.Publication, ServerSamplers),
    (protocols.JudgePool, JudgeWorkers),
    (protocols.LearnerRole, RayLearner),
    (protocols.LearnerRole, LocalLearner),
    (protocols.Roles, RayRoles),
    (protocols.Roles, LocalRoles),
]


def members(protocol: type) -> dict[str, object]:
    """The protocol's methods and attributes (its own and those of protocols it extends)."""
    out: dict[str, object] = {}
    for base in reversed(protocol.__mro__):
        if base is object or base.__name__ in ("Protocol", "Generic"):
            continue
        out.update({k: v for k, v in vars(base).items() if not k.startswith("_") and callable(v)})
        out.update({k: None for k in getattr(base, "__annotations__", {})})
    return out


@pytest.mark.parametrize("protocol, cls", IMPLEMENTATIONS, ids=lambda x: x.__name__)
def test_implementation_satisfies_protocol(protocol, cls):
    wanted = members(protocol)
    assert wanted, f"{protocol.__name__} declares nothing"
    source = inspect.getsource(cls)
    for name, spec in wanted.items():
        if spec is None:  # an attribute: set in __init__ (or a class attribute)
            assert hasattr(cls, name) or f"self.{name} =" in source or f"self.{name}," in source, (
                f"{cls.__name__} has no attribute {name!r} of {protocol.__name__}"
            )
            continue
        impl = getattr(cls, name, None)
        assert impl is not None, f"{cls.__name__} lacks {name}() of {protocol.__name__}"
        want = [p.name for p in inspect.signature(spec).parameters.values()]
        have = [p.name for p in inspect.signature(impl).parameters.values()]
        assert have == want, f"{cls.__name__}.{name}{have} does not match {protocol.__name__}.{name}{want}"
        assert inspect.iscoroutinefunction(impl) == inspect.iscoroutinefunction(spec), (
            f"{cls.__name__}.{name}: async in one and not the other"
        )


def test_a_class_missing_a_method_is_caught():
    class Partial:
        def publish(self, adapter):
            return 0.0

    with pytest.raises(AssertionError, match="lacks generate"):
        test_implementation_satisfies_protocol(protocols.SamplerPool, Partial)
