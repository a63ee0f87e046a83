"""Fast tests of the server's pieces that need no engine: config, budgets, routing, protocol, stream splitting."""

import json

import pytest
from pydantic import ValidationError

from l2s.reasoning import ReasoningMarkers, ReasoningStream
from server.budgets import Calibration, choose_variant, effective_budget
from server.config import AutoPolicy, AutoRule, EffortBudgets, ServerConfig, VariantConfig
from server.protocol import ChatCompletionRequest


def _variant(tmp_path, name, **kwargs):
    path = tmp_path / name
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text("{}")
    return VariantConfig(name=name, path=path, **kwargs)


def _config(tmp_path, **kwargs):
    variants = [_variant(tmp_path, "long"), _variant(tmp_path, "short", efforts=EffortBudgets(low=2, medium=4, high=8))]
    return ServerConfig(
        variants=variants, auto=AutoPolicy(rules=[AutoRule(max_budget=16, variant="short")], default="long"), **kwargs
    )


def test_effective_budget(tmp_path):
    long = _variant(tmp_path, "long")
    assert effective_budget(long, None, None, None) is None
    assert effective_budget(long, -1, None, None) is None
    assert effective_budget(long, 5, "high", None) == 5  # an explicit budget wins over effort
    assert effective_budget(long, None, "none", None) == 0
    assert effective_budget(long, None, "low", None) == 16 and effective_budget(long, None, "medium", None) == 64
    capped = _variant(tmp_path, "capped", max_thinking_tokens=10)
    assert effective_budget(capped, None, None, None) == 10 and effective_budget(capped, 50, None, None) == 10
    assert effective_budget(capped, 3, None, None) == 3


def test_effort_budgets_must_nest():
    with pytest.raises(ValidationError):
        EffortBudgets(low=64, medium=16, high=-1)
    with pytest.raises(ValidationError):
        EffortBudgets(low=8, medium=-1, high=32)


def test_auto_by_rules(tmp_path):
    config = _config(tmp_path)
    assert choose_variant(config, 8, None, None) == "short"
    assert choose_variant(config, 16, None, None) == "short"
    assert choose_variant(config, 17, None, None) == "long"
    assert choose_variant(config, None, None, None) == "long"
    assert choose_variant(config, -1, None, None) == "long"
    assert choose_variant(config, None, "none", None) == "short"


def test_auto_by_calibration(tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text(
        json.dumps(
            {
                "variants": {
                    "long": {
                        "efforts": {"low": 30, "medium": 60, "high": 120},
                        "budgets": [
                            {"budget": 0, "accuracy": 0.1, "mean_reasoning_tokens": 0},
                            {"budget": 16, "accuracy": 0.2, "mean_reasoning_tokens": 16},
                            {"budget": None, "accuracy": 0.95, "mean_reasoning_tokens": 150},
                        ],
                    },
                    "short": {
                        "efforts": {"low": 0, "medium": 0, "high": 0},
                        "budgets": [
                            {"budget": 0, "accuracy": 0.4, "mean_reasoning_tokens": 0},
                            {"budget": 16, "accuracy": 0.4, "mean_reasoning_tokens": 0},
                            {"budget": None, "accuracy": 0.4, "mean_reasoning_tokens": 0},
                        ],
                    },
                }
            }
        )
    )
    calibration = Calibration.load(path)
    config = _config(tmp_path)
    assert choose_variant(config, 20, None, calibration) == "short"  # at budget 16 short is more accurate
    assert choose_variant(config, None, None, calibration) == "long"
    assert choose_variant(config, 0, None, calibration) == "short"
    assert effective_budget(config.variants[0], None, "medium", calibration) == 60  # measured, not configured


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="auto policy"):
        ServerConfig(variants=[_variant(tmp_path, "long")], auto=AutoPolicy(default="nope"))._check_auto()
    with pytest.raises(ValidationError):
        VariantConfig(name="auto", path=tmp_path)
    with pytest.raises(ValidationError):
        ServerConfig.model_validate({"variants": [], "unknown_key": 1})
    with pytest.raises(ValueError, match="variant x: model .*missing: no such directory"):
        ServerConfig(variants=[VariantConfig(name="x", path=tmp_path / "missing")])._check_variants({"x"})


def _request(**kwargs):
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kwargs}
    )


def test_protocol_budget_fields():
    assert _request().requested_budget() is None
    assert _request(thinking_token_budget=7).requested_budget() == 7
    assert _request(thinking={"type": "enabled", "budget_tokens": 9}).requested_budget() == 9
    assert _request(thinking={"type": "disabled"}).requested_budget() == 0
    assert _request(reasoning_effort="minimal").effort() == "low"
    assert _request(max_tokens=5, max_completion_tokens=9).max_output_tokens() == 9
    for bad in [
        dict(thinking_token_budget=-2),
        dict(thinking={"type": "enabled"}),
        dict(thinking_token_budget=3, thinking={"type": "enabled", "budget_tokens": 3}),
        dict(messages=[]),
        dict(n=0),
        dict(stop=["a"] * 5),
        dict(reasoning_effort="max"),
    ]:
        with pytest.raises(ValidationError):
            _request(**bad)


def test_reasoning_stream_never_leaks_markers():
    stream = ReasoningStream(start_id=1, end_id=2)
    pieces = ["<th", "ink>ab", "c</", "think", ">The ", "answer", " is 4."]
    reasoning = answer = ""
    for piece in pieces:
        r, a = stream.feed(piece)
        reasoning, answer = reasoning + r, answer + a
        assert "<" not in r + a or a.endswith(".")
    r, a = stream.flush()
    reasoning, answer = reasoning + r, answer + a
    assert (reasoning, answer) == ("abc", "The answer is 4.")


def test_reasoning_stream_multi_token_markers_and_counts():
    markers = ReasoningMarkers(start="[R]", end="[/R]")
    stream = ReasoningStream(start_id=10, end_id=11, markers=markers)
    out = [stream.feed(text, ids) for text, ids in [("[R]x", [10, 5]), ("y[/", [6]), ("R]z", [11, 7])]]
    out.append(stream.flush())
    assert "".join(r for r, _ in out) == "xy" and "".join(a for _, a in out) == "z"
    assert stream.reasoning_tokens == 2 and stream.answer_tokens == 1 and stream.closed


def _adapter(tmp_path, name, base):
    path = tmp_path / name
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base), "r": 8}))
    return path


def _load(tmp_path, variants):
    config = tmp_path / "server.yaml"
    config.write_text(json.dumps({"variants": variants}))
    return ServerConfig.load(config, None)


def test_lora_adapters_find_their_base(tmp_path):
    long = _variant(tmp_path, "long")
    by_path = _adapter(tmp_path, "by-path", long.path)
    moved = _adapter(tmp_path, "moved", "/elsewhere/long")  # a models directory moved: matched by name
    named = _adapter(tmp_path, "named", "/nowhere/other")
    config = _load(
        tmp_path,
        [
            {"name": "long", "path": str(long.path)},
            {"name": "by-path", "path": str(by_path)},
            {"name": "moved", "path": str(moved)},
            {"name": "named", "path": str(named), "base": "long", "efforts": {"low": 1, "medium": 2, "high": 3}},
        ],
    )
    assert {v.name: v.base for v in config.variants} == {
        "long": None,
        "by-path": "long",
        "moved": "long",
        "named": "long",
    }


def test_an_adapter_without_its_base_is_refused(tmp_path):
    from l2s.jsonl import CorruptFile

    long = _variant(tmp_path, "long")
    orphan = _adapter(tmp_path, "orphan", "/models/other-base")
    with pytest.raises(CorruptFile, match="adapter of /models/other-base, which no hosted variant serves"):
        _load(tmp_path, [{"name": "long", "path": str(long.path)}, {"name": "orphan", "path": str(orphan)}])
    with pytest.raises(CorruptFile, match="its base 'nope' is not a hosted full model"):
        _load(tmp_path, [{"name": "orphan", "path": str(orphan), "base": "nope"}])
    adapter = _adapter(tmp_path, "adapter", long.path)
    with pytest.raises(CorruptFile, match="runs on its base's engine, with its base's engine settings"):
        _load(
            tmp_path,
            [
                {"name": "long", "path": str(long.path)},
                {"name": "a", "path": str(adapter), "engine": {"max_num_seqs": 2}},
            ],
        )
    with pytest.raises(CorruptFile, match="`base` is for LoRA adapters"):
        _load(tmp_path, [{"name": "long", "path": str(long.path), "base": "long"}])
    other = _variant(tmp_path, "other")
    _adapter(tmp_path / "other", "long", other.path)  # named like `long`, but its base is there: not matched by name
    with pytest.raises(CorruptFile, match="adapter of .*other, which no hosted variant serves"):
        _load(tmp_path, [{"name": "long", "path": str(long.path)}, {"name": "a", "path": str(tmp_path / "other/long")}])


def test_a_stray_adapter_in_the_models_dir_is_left_out(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    long = _variant(models, "long")
    (long.path / "model.safetensors").write_bytes(b"")
    _adapter(models, "of-long", long.path)
    _adapter(models, "of-elsewhere", "/models/not-here")
    for adapter in ("of-long", "of-elsewhere"):
        (models / adapter / "adapter_model.safetensors").write_bytes(b"")
    config = ServerConfig.load(None, models)
    assert {v.name: v.base for v in config.variants} == {"long": None, "of-long": "long"}


def test_a_ray_variant_counts_its_replicas_from_its_handles_router(monkeypatch, tmp_path):
    """The replicas the handle's router can send to, read at every refresh; Ray Serve's status is never asked."""
    import asyncio
    from types import SimpleNamespace

    import ray.serve

    import server.remote_engine as remote

    monkeypatch.setattr(ray.serve, "status", lambda: pytest.fail("serve.status() asked"))
    replicas = {"a": object(), "b": object()}
    router = SimpleNamespace(_asyncio_router=SimpleNamespace(_request_router=SimpleNamespace(curr_replicas=replicas)))
    variant = remote.RemoteVariant(_variant(tmp_path, "v"), handle=SimpleNamespace(_router=router), app_name="app")

    async def scenario():
        await variant.refresh()
        assert variant.live_replicas == 2
        replicas.pop("a")  # the router saw it die, or the controller said it stopped
        await variant.refresh()
        assert variant.live_replicas == 1 and variant.copies == 1

    asyncio.run(scenario())


def test_a_ray_variant_asks_for_its_replica_count_often_only_while_it_may_change(monkeypatch, tmp_path):
    """Where the handle's router cannot be read: Ray Serve's status costs the ingress ~0.1-0.2 CPU-s a call (asked
    every 2 s it took a fifth of the ingress's CPU under load), so it is asked often before the first count, after
    a change of count and after a failure."""
    import asyncio
    from types import SimpleNamespace

    import ray.serve

    import server.remote_engine as remote

    asked, running = [], [1]

    def status():
        asked.append(running[0])
        deployment = SimpleNamespace(replica_states={"RUNNING": running[0]})
        return SimpleNamespace(applications={"app": SimpleNamespace(deployments={"v": deployment})})

    monkeypatch.setattr(ray.serve, "status", status)
    monkeypatch.setattr(remote, "REFRESH_SECONDS", 0.0)
    monkeypatch.setattr(remote, "STEADY_REFRESH_SECONDS", 3600.0)
    monkeypatch.setattr(remote, "UNSETTLED_SECONDS", 0.05)
    variant = remote.RemoteVariant(_variant(tmp_path, "v"), handle=None, app_name="app")

    async def scenario():
        await variant.refresh()  # the first count
        assert (len(asked), variant.live_replicas) == (1, 1)
        await asyncio.sleep(0.1)
        await variant.refresh()  # settled: not asked again within STEADY_REFRESH_SECONDS
        assert len(asked) == 1
        variant._unavailable()  # a request saw its replica fail
        running[0] = 0
        await variant.refresh()
        assert (len(asked), variant.live_replicas) == (2, 0)
        await asyncio.sleep(0.1)
        running[0] = 2
        await variant.refresh()  # no live replica: asked however long ago the last failure was
        assert (len(asked), variant.live_replicas) == (3, 2)
        await asyncio.sleep(0.1)
        await variant.refresh()
        assert len(asked) == 3

    asyncio.run(scenario())


def test_a_ray_replica_sends_at_once_until_text_then_joins_chunks_per_interval():
    """Under `l2s serve --ray` a replica's messages go at once until one carries text — a reasoning model's first
    token is often its opening marker, which shows nothing, and holding the next one for the interval cost 250 ms
    of time to first token — and then at most one per `stream_interval_ms`, each choice's chunks joined."""
    import asyncio
    from types import SimpleNamespace

    from server.engine import Chunk
    from server.ray_serve import VariantReplica

    def chunk(reasoning: str, tokens: int, finish: str | None = None) -> Chunk:
        return Chunk(reasoning, "", tokens, 0, tokens, finish)

    async def stream(*_args):
        yield 0, chunk("", 1)  # the opening marker
        await asyncio.sleep(0.01)
        yield 0, chunk("a", 2)
        for tokens in range(3, 6):
            await asyncio.sleep(0.01)
            yield 0, chunk("b", tokens, "stop" if tokens == 5 else None)

    replica = VariantReplica.func_or_class.__new__(VariantReplica.func_or_class)
    replica.engine, replica.interval, replica.replica = SimpleNamespace(stream=stream), 0.2, "r1"

    async def messages():
        loop, out = asyncio.get_running_loop(), []
        start = loop.time()
        async for message in replica.generate("id", [1], None, False):
            out.append((loop.time() - start, [(index, c.reasoning, c.finish_reason) for index, c in message]))
        return out

    sent = asyncio.run(messages())
    assert [texts for _, texts in sent] == [[(0, "", None)], [(0, "a", None)], [(0, "bbb", "stop")]]
    assert sent[1][0] < 0.1  # the first text at once, not an interval after the marker
    assert sent[2][0] >= 0.2  # the rest joined, an interval after the first text
