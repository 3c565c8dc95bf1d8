"""Ray processes that a killed run left behind.

A driver killed with SIGKILL (by hand, or by the OOM killer) takes its local Ray instance's
raylet down with it, but the raylet's agents (ray::DashboardAgent, ray::RuntimeEnvAgent) and
the odd worker outlive it for up to 90 s, reparented to init, holding ports and memory. The
next local start removes them. Every process of a live Ray node is a child of its raylet, so a
process of this user named `ray::...` whose parent is not a raylet belongs to no live node;
another user's processes and every live instance's (a `ray start` cluster included) are left
alone.
"""

from __future__ import annotations

import os

import psutil


def _is_raylet(proc: psutil.Process | None) -> bool:
    try:
        return proc is not None and os.path.basename((proc.cmdline() or [""])[0]) == "raylet"
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def orphans() -> list[psutil.Process]:
    """This user's Ray processes whose raylet is gone."""
    uid, found = os.getuid(), []
    for proc in psutil.process_iter(["name", "cmdline", "uids", "status"]):
        try:
            cmd = proc.info["cmdline"] or []
            if (
                proc.info["uids"] is None
                or proc.info["uids"].real != uid
                or not cmd
                or not cmd[0].startswith("ray::")
                or proc.info["status"] == psutil.STATUS_ZOMBIE
            ):
                continue
            if not _is_raylet(proc.parent()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def reap() -> list[str]:
    """Kill the orphans; returns what each was (e.g. "ray::DashboardAgent (pid 28154)")."""
    gone = []
    for proc in orphans():
        try:
            name = f"{proc.cmdline()[0]} (pid {proc.pid})"
            proc.kill()
            gone.append(name)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, IndexError):
            continue
    return gone
