"""The server-backed sampler pool against local stand-ins for vLLM's OpenAI server
(tests/fake_completions_server.py, real HTTP): sampling, publication and its verification,
faults (timeouts, 5xx, dropped connections, a restarted server, a wrong adapter, a dead
server among two, a dead fleet) and the start-up checks."""

from __future__ import annotations

import pytest

from alignloop.loop.roles.protocols import ActorLost, Exported, SampleChunk
from alignloop.loop.roles.server_samplers import ServerSamplers, check_servers
from alignloop.loop.serving import ServerOptions
from alignloop.policies.adapter import AdapterMismatch, AdapterPayload
from alignloop.records import Message, Prompt
from alignloop.records.errors import ConfigError
from tests.fake_completions_server import STOP, FakeCompletionsServer, fake_logprob, fake_tokens


class SamplerCfg:
    samples_per_prompt, temperature, top_p, max_new_tokens, min_new_tokens = 3, 1.0, 1.0, 12, 0


def render(messages) -> list[int]:
    """A stand-in tokenizer: one id per character of the chat, bounded."""
    text = "".join(m["content"] if isinstance(m, dict) else m.content for m in messages)
    return [3 + ord(ch) % 90 for ch in text]


def decode(ids: list[int]) -> str:
    return " ".join(map(str, ids))


def adapter(version: int, weights: bytes | None = None) -> Exported:
    payload = AdapterPayload.create(
        version, weights or f"weights-{version}".encode(), {"r": 8, "target_modules": ["q"]}
    )
    return Exported(payload, payload)


class Learner:
    """Plays the learner: the fake server's log-probs under the adapter it last exported."""

    def __init__(self):
        self.checksum: str | None = None

    def __call__(self, messages, ids):
        return [fake_logprob(t, self.checksum) for t in ids]

    def export(self, version: int, weights: bytes | None = None) -> Exported:
        a = adapter(version, weights)
        self.checksum = a.payload.checksum
        return a


def pool(tmp_path, servers, learner=None, **opts) -> ServerSamplers:
    options = ServerOptions(urls=[s.url for s in servers], timeout_s=opts.pop("timeout_s", 30.0), **opts)
    return ServerSamplers(options, SamplerCfg, "run", tmp_path / "adapters", render, decode, [STOP], learner)


def prompts(n: int) -> list[Prompt]:
    return [Prompt(id=f"p{i}", messages=[Message(role="user", content=f"question {i}")]) for i in range(n)]


def chunks(n_prompts: int = 4, per_chunk: int = 2, seed: int = 100) -> list[SampleChunk]:
    ps = prompts(n_prompts)
    return [SampleChunk(ps[c : c + per_chunk], step=1, seed=seed + c) for c in range(0, n_prompts, per_chunk)]


def expected(chunk_list: list[SampleChunk], checksum: str) -> list[list[tuple]]:
    """What the samples must be: the fake's pure draw, seed + p*k for prompt p, j per sample."""
    k = SamplerCfg.samples_per_prompt
    out = []
    for c in chunk_list:
        part = []
        for p, prompt in enumerate(c.prompts):
            for j in range(k):
                ids, finish = fake_tokens(render(prompt.messages), c.seed + p * k, j, SamplerCfg.max_new_tokens)
                part.append((f"{prompt.id}@{c.step}#{j}", ids, [fake_logprob(t, checksum) for t in ids], finish))
        out.append(part)
    return out


def got(parts) -> list[list[tuple]]:
    return [[(s.id, s.token_ids, s.logprobs, s.finish_reason) for s in part] for part in parts]


def test_samples_come_back_with_token_ids_logprobs_and_the_adapter_version(tmp_path):
    learner = Learner()
    with FakeCompletionsServer() as a, FakeCompletionsServer() as b:
        p = pool(tmp_path, [a, b], learner)
        published = learner.export(3)
        assert p.publish(published) > 0
        assert p.publish(published) == 0.0  # once per version
        done = []
        parts = p.generate(chunks(), lambda i, part: done.append(i))
        assert got(parts) == expected(chunks(), published.payload.checksum)
        assert sorted(done) == [0, 1]
        s = parts[0][0]
        assert s.policy_version == 3 and s.prompt_id == "p0"
        stopped = next(x for part in parts for x in part if x.finish_reason == "stop")
        assert stopped.token_ids[-1] == STOP and stopped.response == decode(stopped.token_ids[:-1])
        # Both servers took prompts, all under the versioned name.
        name = p.adapter_name(published.payload)
        assert a.completions_for(name) >= 1 and b.completions_for(name) >= 1
        p.close()
        assert a.adapters == {} and b.adapters == {}


def test_a_new_version_replaces_the_old_one_on_every_server(tmp_path):
    learner = Learner()
    with FakeCompletionsServer() as a, FakeCompletionsServer() as b:
        p = pool(tmp_path, [a, b], learner)
        v1, v2 = learner.export(1), None
        p.publish(v1)
        v2 = learner.export(2)
        p.publish(v2)
        for server in (a, b):
            assert set(server.adapters) == {p.adapter_name(v2.payload)}
        assert sorted(x.name for x in (tmp_path / "adapters").iterdir()) == [p.adapter_name(v2.payload)]
        parts = p.generate(chunks())
        assert {s.policy_version for part in parts for s in part} == {2}


def test_a_version_republished_with_other_weights_gets_a_name_of_its_own(tmp_path):
    """vLLM keys its prefix cache by adapter name: the same name must never mean other weights."""
    learner = Learner()
    with FakeCompletionsServer() as a:
        p = pool(tmp_path, [a], learner)
        first = learner.export(1, b"one")
        p.publish(first)
        again = learner.export(1, b"two")
        p.publish(again)
        assert p.adapter_name(first.payload) != p.adapter_name(again.payload)
        assert set(a.adapters) == {p.adapter_name(again.payload)}


def test_a_wrong_adapter_behind_the_name_fails_the_probe(tmp_path):
    learner = Learner()
    with FakeCompletionsServer() as a:
        a.tamper = True  # serves other weights than the file's
        p = pool(tmp_path, [a], learner)
        with pytest.raises(AdapterMismatch, match=r"probe log-probs differ from the learner's by [\d.]+ per token"):
            p.publish(learner.export(1))


def test_sampling_from_a_name_the_server_does_not_know_is_retried_after_reloading(tmp_path):
    """A server restarted between publish and sampling (it forgot its adapters): noticed on its
    model list, loaded again and verified, and the run's samples are the same."""
    learner = Learner()
    with FakeCompletionsServer() as a:
        p = pool(tmp_path, [a], learner)
        v = learner.export(1)
        p.publish(v)
        a.adapters.clear()  # restarted before the call
        assert got(p.generate(chunks())) == expected(chunks(), v.payload.checksum)
        a.fail("forget")  # restarted during the call: the request's 404 leads to the reload
        assert got(p.generate(chunks())) == expected(chunks(), v.payload.checksum)
        assert set(a.adapters) == {p.adapter_name(v.payload)}


@pytest.mark.parametrize("fault", ["500", "drop", "slow"])
def test_a_failed_request_is_retried_and_named(tmp_path, fault):
    learner = Learner()
    with FakeCompletionsServer() as a, FakeCompletionsServer() as b:
        # Only the slow answer may time out: it comes 3x past the timeout, and every other request
        # has the whole timeout, however loaded the machine is.
        a.slow_s = 6.0
        p = pool(tmp_path, [a, b], learner, timeout_s=2.0 if fault == "slow" else 30.0)
        v = learner.export(1)
        p.publish(v)
        a.fail(fault)
        assert got(p.generate(chunks())) == expected(chunks(), v.payload.checksum)
        assert any(f.startswith(a.url) for f in p.failures), p.failures
        what = {"500": "HTTP 500: internal error", "drop": "unreachable", "slow": "timed out"}[fault]
        assert what in " ".join(p.failures)


def test_one_of_two_servers_dead_the_other_takes_everything(tmp_path):
    learner = Learner()
    with FakeCompletionsServer() as a, FakeCompletionsServer() as b:
        p = pool(tmp_path, [a, b], learner)
        v = learner.export(1)
        p.publish(v)
        a.stop()
        assert got(p.generate(chunks(6, 2))) == expected(chunks(6, 2), v.payload.checksum)
        assert p.live == [1]
        # Publishing the next version skips the dead server and names it.
        v2 = learner.export(2)
        p.publish(v2)
        assert set(b.adapters) == {p.adapter_name(v2.payload)}
        assert any(a.url in f and "unreachable" in f for f in p.failures)


def test_a_dead_fleet_stops_the_run_as_a_lost_actor_naming_each_server(tmp_path):
    learner = Learner()
    with FakeCompletionsServer() as a, FakeCompletionsServer() as b:
        p = pool(tmp_path, [a, b], learner)
        p.publish(learner.export(1))
        a.stop()
        b.stop()
        with pytest.raises(ActorLost, match="--resume") as e:
            p.generate(chunks())
        assert a.url in str(e.value) and b.url in str(e.value)
        with pytest.raises(ActorLost, match="publishing adapter v2"):
            p.publish(learner.export(2))


def test_a_server_dying_mid_call_has_its_requests_retried_on_the_other(tmp_path):
    learner = Learner()
    with FakeCompletionsServer() as a, FakeCompletionsServer() as b:
        p = pool(tmp_path, [a, b], learner)
        v = learner.export(1)
        p.publish(v)
        a.fail(*["drop"] * 50)  # every request it gets from now on
        assert got(p.generate(chunks(8, 2))) == expected(chunks(8, 2), v.payload.checksum)
        assert p.live == [1]


def test_an_adapter_dir_the_servers_cannot_read_is_named(tmp_path):
    with FakeCompletionsServer() as a:
        a.reads_files = False
        p = pool(tmp_path, [a], Learner())
        with pytest.raises(ActorLost, match=r"the servers must read it there.*No adapter found") as e:
            p.publish(adapter(1))
        assert str(tmp_path / "adapters") in str(e.value) and a.url in str(e.value)


def test_nothing_published_refuses_to_sample(tmp_path):
    with FakeCompletionsServer() as a:
        with pytest.raises(AdapterMismatch, match="nothing is published"):
            pool(tmp_path, [a]).generate(chunks())


def test_the_bearer_key_is_sent_and_never_shown(tmp_path, monkeypatch):
    key = "sk-server-key-123456789"
    monkeypatch.setenv("SERVER_KEY", key)
    learner = Learner()
    with FakeCompletionsServer(api_key=key) as a:
        p = pool(tmp_path, [a], learner, api_key_env="SERVER_KEY")
        p.publish(learner.export(1))
        assert len(p.generate(chunks())) == 2
        a.api_key = "another-key-entirely-000"
        with pytest.raises(ActorLost) as e:
            p.generate(chunks())
        assert "401" in str(e.value) and key not in str(e.value)
        assert all(key not in f for f in p.failures)
        assert not any(key.encode() in f.read_bytes() for f in tmp_path.rglob("*") if f.is_file())


# start-up checks ------------------------------------------------------------------------------
def check(tmp_path, server: FakeCompletionsServer | str, rank: int = 8, **opts):
    url = server if isinstance(server, str) else server.url
    check_servers(ServerOptions(urls=[url], adapter_dir=str(tmp_path / "adapters"), **opts), rank, "smollm2")


def test_startup_check_passes_on_a_ready_server_and_leaves_nothing_loaded(tmp_path):
    with FakeCompletionsServer() as a:
        check(tmp_path, a)
        assert a.adapters == {}
        assert list((tmp_path / "adapters").iterdir()) == []


@pytest.mark.parametrize(
    "flags, rank, message",
    [
        ({"lora": False}, 8, "has LoRA off .* restart it with --enable-lora"),
        (
            {"runtime": False},
            8,
            "does not allow loading LoRA adapters at run time .* VLLM_ALLOW_RUNTIME_LORA_UPDATING=1",
        ),
        ({"max_rank": 8}, 32, "refuses an adapter of rank 32 .* --max-lora-rank 32 or more, or lower model.lora.r"),
    ],
)
def test_startup_check_names_the_server_and_the_flag(tmp_path, flags, rank, message):
    with FakeCompletionsServer(**flags) as a:
        with pytest.raises(ConfigError, match=message) as e:
            check(tmp_path, a, rank)
        assert a.url in str(e.value)


def test_startup_check_an_unreachable_server(tmp_path):
    a = FakeCompletionsServer()
    a.stop()
    with pytest.raises(ConfigError, match=r"unreachable .*start it \(vllm serve smollm2 --enable-lora") as e:
        check(tmp_path, a)
    assert a.url in str(e.value)


def test_startup_check_a_refused_key(tmp_path, monkeypatch):
    monkeypatch.setenv("SERVER_KEY", "wrong-key-0123456789")
    with FakeCompletionsServer(api_key="right-key-0123456789") as a:
        with pytest.raises(ConfigError, match="HTTP 401.*sampler.server.api_key_env"):
            check(tmp_path, a, api_key_env="SERVER_KEY")
    monkeypatch.delenv("SERVER_KEY")
    with pytest.raises(ConfigError, match="SERVER_KEY is not set"):
        check(tmp_path, "http://127.0.0.1:9/v1", api_key_env="SERVER_KEY")


@pytest.mark.parametrize(
    "url, message",
    [("gpu-1:8000", "not an http"), ("ftp://host/v1", "not an http"), ("http://u:p@host/v1", "holds credentials")],
)
def test_server_urls_are_checked(url, message):
    with pytest.raises(ValueError, match=message):
        ServerOptions(urls=[url])
    assert ServerOptions(urls=["http://gpu-1:8000"]).urls == ["http://gpu-1:8000/v1"]


def test_backend_server_and_its_block_go_together(tmp_path):
    from alignloop.loop.config import load_config

    path = tmp_path / "run.yaml"
    path.write_text(
        "name: t\ndata: {path: p.jsonl}\njudge: {type: rules, checks: [{type: finished}]}\nsampler: {backend: server}\n"
    )
    with pytest.raises(ConfigError, match="sampler.backend: server needs sampler.server"):
        load_config(path)
    cfg = load_config(path, ["sampler.server.urls=[http://gpu-1:8000]"])
    assert cfg.sampler.server.urls == ["http://gpu-1:8000/v1"]
    with pytest.raises(ConfigError, match="set both or neither"):
        load_config(path, ["sampler.backend=hf", "sampler.server.urls=[http://gpu-1:8000]"])


def test_an_old_version_s_cleanup_removes_only_the_files_publication_wrote(tmp_path):
    from alignloop.loop.roles.server_samplers import _remove_written

    ours, shared = tmp_path / "run-v1-abc", tmp_path / "run-v2-def"
    for d in (ours, shared):
        d.mkdir()
        (d / "adapter_model.safetensors").write_bytes(b"w")
        (d / "adapter_config.json").write_text("{}")
    (shared / "notes.txt").write_text("a user's file")
    for d in (ours, shared):
        _remove_written(d, ["adapter_model.safetensors", "adapter_config.json"])
    assert not ours.exists()
    assert sorted(p.name for p in shared.iterdir()) == ["notes.txt"]
