"""The roles a run's steps talk to, each behind a Protocol (protocols.py):

    samplers.py    the sampler pool and adapter publication, over replica handles
    judges.py      the judge pool (JudgeWorker, back-pressure, usage), over worker handles
    ray_runtime.py start a local Ray instance or attach to a cluster; placement; call results
    ray_roles.py   the roles as Ray actors (RayRoles, RayLearner)
    local.py       the roles as in-process objects (LocalRoles, LocalLearner)

Importing this package imports neither Ray nor torch; its modules do.
"""
