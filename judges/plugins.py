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
when the config is validated, so a wrong target fails at once, naming itself and the cause:
a module that raises or calls sys.exit() while imported, or options the constructor does not
take, are config errors (exit 2) before any actor starts.

Every `judge()` call runs under `timeout_s` (TimedJudge): a call that has not returned by
then becomes an error judgment for each of its samples, and the run goes on (and Ctrl-C
still stops it). Python cannot stop a thread, so a call that never returns is abandoned on
its daemon thread, which ends with the process.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import inspect
import threading
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from alignloop.records import Judgment
from alignloop.records.secrets import quote

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
    timeout_s: float = Field(
        600.0,
        gt=0,
        description="A judge() call (one chunk of judging.chunk_size samples) still running after this many "
        "seconds becomes an error judgment for each of its samples; its thread is abandoned.",
    )

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
        raise PluginError(f"target {quote(target)} must look like 'my_pkg.judges:MyJudge'")
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - any failure while importing user code is reported as such
        # SystemExit too: a module that exits while imported would otherwise end the run with
        # its code (sys.exit(0): "success", with no output).
        raise PluginError(f"cannot import {quote(module_name)} for judge target {quote(target)}: {_cause(e)}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PluginError(
                f"judge target {quote(target)}: module {quote(module_name)} has no attribute {quote(attr)}"
            )
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
    except (Exception, SystemExit) as e:  # noqa: BLE001 - as in _load_target
        raise PluginError(f"cannot load entry point {quote(name)} ({found[0].value}): {_cause(e)}") from None


def _cause(e: BaseException) -> str:
    """What went wrong in a plugin's import, masked and short (its text may hold anything)."""
    if isinstance(e, SystemExit):
        return f"the module called sys.exit({quote(e.code)}) while being imported"
    return f"{type(e).__name__}: {quote(str(e), limit=200)}"


def plugin_options(cls: type, cfg: PythonJudgeConfig) -> tuple[tuple, dict]:
    """(args, kwargs) to construct the plugin with."""
    config_cls = getattr(cls, "Config", None)
    if isinstance(config_cls, type) and issubclass(config_cls, BaseModel):
        try:
            return (config_cls.model_validate(cfg.options),), {}
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(options)'}: {err['msg']}" for err in e.errors())
            raise PluginError(f"options for {cfg.source} are invalid: {problems}") from None
    _check_signature(cls, cfg)
    return (), dict(cfg.options)


def _check_signature(cls: type, cfg: PythonJudgeConfig) -> None:
    """Options the constructor does not take (or required ones missing) fail here, when the
    config is validated, rather than in a judge actor after Ray has started."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # a class implemented in C: nothing to read
        return
    named = [p.name for p in params.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(cfg.options) - set(named))
        if unknown:
            raise PluginError(
                f"options for {cfg.source}: {cls.__name__}() takes no option {', '.join(map(quote, unknown))}; "
                f"it takes: {', '.join(named) or 'none'}"
            )
    missing = [n for n in named if params[n].default is inspect.Parameter.empty and n not in cfg.options]
    if missing:
        raise PluginError(
            f"options for {cfg.source}: {cls.__name__}() needs {', '.join(missing)}; set them under judge.options"
        )


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
    return TimedJudge(judge, cfg.timeout_s)


class TimedJudge:
    """A plugin judge whose judge() calls run under a deadline, on an event loop of their own
    in a daemon thread: a call that blocks (time.sleep, a loop with no await) cannot hold up
    the caller's loop, and one still running after `timeout_s` becomes error judgments. The
    stuck call is cancelled if it awaits; if it blocks, its thread is abandoned (Python cannot
    stop a thread) and the next call gets a fresh one. Other attributes are the plugin's own."""

    def __init__(self, judge: Any, timeout_s: float):
        self.plugin, self.timeout_s = judge, timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def __getattr__(self, attr: str) -> Any:  # name, usage(), ...: the plugin's
        if attr == "plugin":  # not set yet (a copy being made): no recursion
            raise AttributeError(attr)
        return getattr(self.plugin, attr)

    async def judge(self, prompts, samples) -> list[Judgment]:
        start = time.perf_counter()
        loop = self._worker_loop()
        call = asyncio.run_coroutine_threadsafe(_no_exit(self.plugin.judge(prompts, samples)), loop)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(call), self.timeout_s)
        except TimeoutError:
            self._abandon(loop)
            took = time.perf_counter() - start
            error = (
                f"TimeoutError: judge() did not return within timeout_s={self.timeout_s:g} s (the call was abandoned)"
            )
            return [Judgment(sample_id=s.id, judge=self.plugin.name, latency_s=took, error=error) for s in samples]

    def _worker_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=_run_forever, args=(self._loop,), daemon=True, name="plugin-judge").start()
            return self._loop

    def _abandon(self, loop: asyncio.AbstractEventLoop) -> None:
        """New calls go to a fresh loop; this one stops once its calls are done (never, if one blocks it)."""
        with self._lock:
            if self._loop is loop:
                self._loop = None
        try:  # a function, not a coroutine, is handed over: a loop that never runs again just drops it
            loop.call_soon_threadsafe(lambda: loop.create_task(_stop_when_idle()))
        except RuntimeError:
            pass  # already closed


async def _no_exit(call: Any) -> Any:
    """sys.exit() (or a KeyboardInterrupt raised by the plugin itself: Ctrl-C reaches the main
    thread, not this one) inside judge() would end the loop and leave the call unanswered; it
    is a judge error instead, never the run's exit code."""
    try:
        return await call
    except SystemExit as e:
        raise RuntimeError(f"judge() called sys.exit({quote(e.code)})") from None
    except KeyboardInterrupt:
        raise RuntimeError("judge() raised KeyboardInterrupt") from None


def _run_forever(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


async def _stop_when_idle() -> None:
    # Polled, not awaited on: the cancelled calls may take a moment to unwind.
    while len(asyncio.all_tasks()) > 1:
        await asyncio.sleep(1)
    asyncio.get_running_loop().stop()
