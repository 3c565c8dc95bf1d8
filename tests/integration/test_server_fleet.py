"""`alignloop run` with `sampler.backend: server` on a real local Ray, the servers a local
stand-in for vLLM's (tests/fake_completions_server.py) sampling from the tiny model's
vocabulary: a fleet that is down at start-up is refused before Ray starts (exit 2, naming the
server); a fleet that dies mid-run stops it (exit 7, naming the server), and --resume once it
is back (restarted, its adapters gone) ends exactly as an uninterrupted run."""

from __future__ import annotations

import pytest

from tests.fake_completions_server import FakeCompletionsServer
from tests.helpers import alignloop, artifacts, assert_same, finish, run_cli, write_config

pytestmark = pytest.mark.integration


def settings(server: FakeCompletionsServer) -> dict:
    # The stand-in's log-probs are not the tiny model's: the probe's comparison is opened wide
    # (test_vllm_server.py checks it against a real server); everything else is as configured.
    opts = {"urls": [server.url], "timeout_s": 30, "attempts": 2, "logprob_tolerance": 1e9}
    return {"sampler": {"backend": "server", "samples_per_prompt": 3, "max_new_tokens": 6, "server": opts}}


@pytest.fixture(scope="module")
def fleet(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    # The words' ids (after the special tokens) and the tiny model's end of turn.
    with FakeCompletionsServer(vocab=(len(tok.all_special_ids), len(tok) - 1), stop=tok.eos_token_id) as server:
        yield server


def test_a_fleet_down_at_start_is_refused_before_ray(tmp_path, tiny_model):
    server = FakeCompletionsServer()
    server.stop()
    out = run_cli("run", str(write_config(tmp_path, tiny_model, "down", **settings(server))))
    assert out.returncode == 2, out.stderr
    assert server.url in out.stderr and "unreachable" in out.stderr and "--enable-lora" in out.stderr
    assert not (tmp_path / "down").exists()


def test_a_fleet_dying_mid_run_stops_it_and_resume_ends_as_an_uninterrupted_run(tmp_path, tiny_model, fleet):
    full = write_config(tmp_path, tiny_model, "full", **settings(fleet))
    finish(alignloop("run", str(full)))
    assert fleet.adapters == {}, "the run's adapters leave the server when it ends"

    # Requests: the probe of v0, iteration 1's 4 prompts, the probe of v1; then iteration 2's
    # first prompt is answered and the server goes down.
    fleet.down_after(7)
    cut = write_config(tmp_path, tiny_model, "cut", **settings(fleet))
    proc = alignloop("run", str(cut))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 7, out
    assert fleet.url in out and "--resume" in out

    fleet.up()  # restarted: answering again, no adapters loaded
    finish(alignloop("run", str(cut), "--resume"))
    assert_same(artifacts(tmp_path / "full"), artifacts(tmp_path / "cut"))
