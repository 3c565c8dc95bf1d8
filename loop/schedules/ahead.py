"""Sampling ahead of the learner (asynchronous.max_staleness N): a second thread samples and
judges iteration j from the adapter of iteration j-1-N while the learner trains the
iterations before j.

The adapter each iteration samples from is fixed by that schedule, never by timing, so a run
is reproducible, and sampling waits for the adapter it needs: the samplers are never more
than N versions behind the learner (back-pressure). Each step is saved as it finishes, on
either thread; a resumed run picks up both where they were."""

from __future__ import annotations

import queue
import threading

from alignloop.loop.roles.protocols import Exported
from alignloop.loop.steps import Judged, Steps


def run(steps: Steps, adapter: Exported) -> Exported:
    n, last = steps.cfg.asynchronous.max_staleness, steps.cfg.iterations
    first = steps.state.last_learned() + 1
    if first == 1:  # a resumed run may sample from it again after the learner moved on
        steps.store.save_start_adapter(adapter.payload)
    adapters = Adapters(steps, adapter)
    handoff: queue.Queue[tuple[Judged, float] | BaseException] = queue.Queue()

    def produce() -> None:
        try:
            for j in range(first, last + 1):
                step = steps.state.cursor.first_step_ahead(j)
                done = (steps.state.cursor.ahead or {}).get(j)
                publish_s = 0.0  # only sampling needs an adapter; saved samples are judged as they are
                if step == "sample":
                    if (served := adapters.serve(max(0, j - 1 - n))) is None:
                        return  # the learner stopped
                    publish_s = served
                handoff.put((steps.sampled_and_judged(j, step, done.metrics if done else {}), publish_s))
        except BaseException as e:  # noqa: BLE001 - raised on the learner's thread, in order
            handoff.put(e)

    producer = threading.Thread(target=produce, name="alignloop-sampling-ahead", daemon=True)
    producer.start()
    try:
        for i in range(first, last + 1):
            item = handoff.get()
            if isinstance(item, BaseException):
                raise item
            judged, publish_s = item
            learned = steps.learn(i, judged)
            steps.record(i, learned.adapter, judged.metrics, {"publish_s": publish_s}, learned.metrics)
            adapters.learned(i, learned.adapter)
            steps.log(i, judged)
    finally:
        adapters.stop()
    producer.join()
    # The run ends as a sequential one does: every sampler serves its last adapter.
    final = adapters.of(last)
    steps.roles.samplers.publish(final)
    return final


class Adapters:
    """The adapters later iterations still sample from, by the iteration that learned them (0:
    the run's start); the sampling thread waits here for the one it needs."""

    def __init__(self, steps: Steps, start: Exported):
        self.steps, self.by_iteration = steps, {steps.state.last_learned(): start}
        self.cond, self.stopped = threading.Condition(), False

    def learned(self, i: int, adapter: Exported) -> None:
        with self.cond:
            self.by_iteration[i] = adapter
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def of(self, k: int) -> Exported:
        return self.by_iteration[k]

    def serve(self, k: int) -> float | None:
        """Wait until iteration k's adapter is learned (or read it back from the run
        directory), make every sampler serve it; the seconds that took (None: stopped)."""
        with self.cond:
            while k not in self.by_iteration and k > self.steps.state.last_learned() and not self.stopped:
                self.cond.wait()
            if self.stopped:
                return None
            if k not in self.by_iteration:
                payload = self.steps.store.learned_adapter(k)
                self.by_iteration[k] = Exported(payload, payload)
            adapter = self.by_iteration[k]
            for old in [v for v in self.by_iteration if v < k]:
                del self.by_iteration[old]  # no later iteration samples from it
        return self.steps.roles.samplers.publish(adapter)
