"""Your own judge class, loaded by import path or from an installed package's entry point.

    judge:
      type: python
      target: my_pkg.judges:MyJudge      # module:Class, importable where the judge actors run
      options: {min_words: 5}            # validated by MyJudge.Config if it has one, else **kwargs

    judge:
      type: python
      entry_point: my-judge              # a name in the `alignloop.judges` entry-point group

An installed package offers a judge by declaring, in its pyproject.toml:

    [project.entry-points."alignloop.judges"]
    my-judge = "my_pkg.judges:MyJudge"

The contract is one thing: a class whose instances have a `name` and an
`async def judge(self, prompts, samples) -> list[Judgment]` (judges/base.py). If the class has
a pydantic model as its `Config` attribute, `options` are validated by it and the class is
called with the validated model; otherwise it is called with `**options`. Loading is checked
when the config is validated, so a wrong target fails at once, naming itself and the cause.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ENTRY_POINT_GROUP = "alignloop.judges"


class PluginError(ValueError):
    """The plugin cannot be loaded or does not fit the Judge protocol; says which and why."""


class PythonJudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["python"] = "python"
    target: str | None = Field(None, description="Judge class as 'module.path:ClassName'.")
    entry_point: str | None = Field(
        None, description=f"Name of a judge in the '{ENTRY_POINT_GROUP}' entry-point group."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Passed to the class (validated by its Config if any)."
    )
    name: str | None = Field(None, description="Recorded as `judge` on every judgment (None: the class's own name).")

    @model_validator(mode="after")
    def _one_source_that_loads(self) -> PythonJudgeConfig:
        if (self.target is None) == (self.entry_point is None):
            raise ValueError(
                "set exactly one of `target` ('module:Class') or `entry_point` (an installed judge's name)"
            )
        cls = load_class(self)
        plugin_options(cls, self)  # validates the options now rather than in a judge actor
        return self

    @property
    def source(self) -> str:
        return self.target or f"entry point {self.entry_point!r} ({ENTRY_POINT_GROUP})"


def load_class(cfg: PythonJudgeConfig) -> type:
    if cfg.target is not None:
        obj = _load_target(cfg.target)
    else:
        assert cfg.entry_point is not None  # the validator asks for exactly one of the two
        obj = _load_entry_point(cfg.entry_point)
    if not inspect.isclass(obj):
        raise PluginError(f"{cfg.source} is a {type(obj).__name__}, not a class; point it at the judge class")
    judge = getattr(obj, "judge", None)
    if judge is None:
        raise PluginError(
            f"{cfg.source} does not satisfy the Judge protocol: it has no method "
            "`async def judge(self, prompts, samples) -> list[Judgment]`"
        )
    if not inspect.iscoroutinefunction(judge):
        raise PluginError(
            f"{cfg.source} does not satisfy the Judge protocol: `judge` must be `async def` "
            "(wrap blocking work in asyncio.to_thread)"
        )
    return obj


def _load_target(target: str) -> Any:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise PluginError(f"target {target!r} must look like 'my_pkg.judges:MyJudge'")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any failure while importing user code is reported as such
        raise PluginError(f"cannot import {module_name!r} for judge target {target!r}: {type(e).__name__}: {e}") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PluginError(f"judge target {target!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _load_entry_point(name: str) -> Any:
    found = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        known = sorted(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        raise PluginError(
            f"no judge named {name!r} in the {ENTRY_POINT_GROUP!r} entry-point group "
            f"(installed: {', '.join(known) or 'none'}); is its package installed?"
        )
    try:
        return found[0].load()
    except Exception as e:  # noqa: BLE001
        raise PluginError(f"cannot load entry point {name!r} ({found[0].value}): {type(e).__name__}: {e}") from e


def plugin_options(cls: type, cfg: PythonJudgeConfig) -> tuple[tuple, dict]:
    """(args, kwargs) to construct the plugin with."""
    config_cls = getattr(cls, "Config", None)
    if isinstance(config_cls, type) and issubclass(config_cls, BaseModel):
        try:
            return (config_cls.model_validate(cfg.options),), {}
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(options)'}: {err['msg']}" for err in e.errors())
            raise PluginError(f"options for {cfg.source} are invalid: {problems}") from None
    return (), dict(cfg.options)


def build_plugin(cfg: PythonJudgeConfig):
    cls = load_class(cfg)
    args, kwargs = plugin_options(cls, cfg)
    try:
        judge = cls(*args, **kwargs)
    except TypeError as e:
        raise PluginError(f"cannot construct {cfg.source} with options {sorted(kwargs)}: {e}") from e
    if cfg.name is not None:
        judge.name = cfg.name
    if not isinstance(getattr(judge, "name", None), str):
        raise PluginError(
            f"{cfg.source} does not satisfy the Judge protocol: instances need a `name` "
            "attribute (str, recorded on every judgment); set one or give `name` in the config"
        )
    return judge
