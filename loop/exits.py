"""Exit codes, in one place: what `alignloop` returns, for people and schedulers (the README
lists them)."""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0  # done; a round promoted
    CRASH = 1  # a bug: a traceback
    CONFIG = 2  # a config, data, model or run-directory error: nothing was written
    JUDGE_ERRORS = 3  # more judge errors than judging.max_error_rate, or the judges' cost cap: stopped, resumable
    REJECTED = 4  # a round the eval gate did not promote
    NO_NEW_PROMPTS = 5  # a round with no prompt its series has not seen
    LOCKED = 6  # another alignloop process holds the run or series directory
    ACTOR_LOST = 7  # an actor died (killed, OOM, node gone) or the inference servers failed: stopped, resumable
    WAITING = 8  # judge.type human: samples wait for people's judgments (alignloop review); rerun to go on
