"""notelab.connect against the run's real two-replica vLLM worker."""
import asyncio
import json

import pytest

import notelab
from notelab.client import ReplicaPool

pytestmark = pytest.mark.worker


@pytest.fixture(scope="module")
def client(shared):
    return notelab.connect(shared)


def test_chat(client):
    r = client.chat.completions.create(model=client.model, messages=[{"role": "user", "content": "Say hi."}],
                                       max_tokens=12, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens > 0 and r.choices[0].message.content.strip()


def test_chat_prompt_is_a_plain_dialogue(client):
    # what the model sees: one <bos>, the system text first, then User:/Assistant: lines
    import httpx
    url, key = client.pool.acquire()
    client.pool.release(url)
    r = httpx.post(url[:-3] + "/tokenize", headers={"Authorization": f"Bearer {key}"}, json={
        "model": client.model, "add_generation_prompt": True, "return_token_strs": True,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}).json()
    assert r["token_strs"][:2] == ["<bos>", "Be"] and r["token_strs"].count("<bos>") == 1
    assert r["token_strs"][-2:] == ["Assistant", ":"] and "User" in r["token_strs"]


def test_a_reply_ends_at_its_line_end(client):
    # force "\n" (id 107) as the first token: it must end the reply, not appear in it
    r = client.chat.completions.create(model=client.model, max_tokens=20, temperature=0, logit_bias={"107": 100},
                                       messages=[{"role": "user", "content": "Hi"}])
    assert (r.choices[0].finish_reason, r.choices[0].message.content, r.usage.completion_tokens) == ("stop", "", 1)
    r = client.chat.completions.create(model=client.model, max_tokens=60, temperature=0,
                                       messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert r.choices[0].finish_reason == "stop" and "\n" not in r.choices[0].message.content


def test_ignore_eos_gives_long_completions(client):
    r = client.completions.create(model=client.model, prompt="Once upon a time", max_tokens=40, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 40


def test_completions_start_with_bos(client):
    r = client.completions.create(model=client.model, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert r.usage.prompt_tokens == 6  # 5 text tokens and the <bos> the tokenizer adds
    assert r.choices[0].text.strip()


def test_versioned_model_name(client):
    ids = [m.id for m in client.models.list().data]
    assert "gemma-3-270m" in ids and any(i.startswith("gemma-3-270m@") for i in ids)


def test_streaming(client):
    # a few tokens at least: a base model may end its answer at once (it did: " Count." and stop)
    chunks = list(client.chat.completions.create(model=client.model, messages=[{"role": "user", "content": "Count."}],
                                                 max_tokens=10, temperature=0, stream=True,
                                                 extra_body={"min_tokens": 4}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 2 and text
    assert set(client.pool.inflight().values()) == {0}  # a closed stream releases its replica


def test_structured_json(client):
    # enums and booleans: an unbounded number lets a 270M model write digits until max_tokens
    schema = {"type": "object", "additionalProperties": False, "required": ["label", "sure"],
              "properties": {"label": {"enum": ["positive", "negative"]}, "sure": {"type": "boolean"}}}
    r = client.chat.completions.create(
        model=client.model, max_tokens=100, temperature=0,
        messages=[{"role": "user", "content": "Classify: 'I loved this film.' Answer as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}})
    obj = json.loads(r.choices[0].message.content)
    assert obj["label"] in ("positive", "negative") and isinstance(obj["sure"], bool)
    assert r.choices[0].finish_reason == "stop"  # the grammar ends the reply when the object is complete
    assert "\n" not in r.choices[0].message.content  # compact JSON ([workers] compact_json)


def test_batch_in_order_with_errors_returned(client):
    prompts = [f"Repeat the number {i}." for i in range(10)]
    out = client.batch(prompts, concurrency=4, max_tokens=6, show_progress=False)
    assert len(out) == 10 and all(isinstance(a, str) for a in out)
    bad = client.batch(["hi", "hi"], concurrency=2, max_tokens=-1, show_progress=False, return_exceptions=True)
    assert all(isinstance(e, Exception) for e in bad)  # a bad request is returned, not raised
    with pytest.raises(Exception):
        client.batch(["hi"], max_tokens=-1, show_progress=False)


def test_batch_inside_a_running_loop(client):
    async def in_a_notebook_cell():  # Jupyter runs cells inside an event loop
        return client.batch(["One.", "Two."], concurrency=2, max_tokens=4, show_progress=False)
    assert len(asyncio.run(in_a_notebook_cell())) == 2


def test_async_twin_streams(client):
    async def go():
        stream = await client.aio.chat.completions.create(model=client.model, max_tokens=8, stream=True,
                                                          messages=[{"role": "user", "content": "Hello"}])
        parts = [c.choices[0].delta.content async for c in stream if c.choices]
        return parts, await client.aio.ask("Hi", max_tokens=4)
    parts, answer = asyncio.run(go())
    assert len(parts) > 1 and isinstance(answer, str)


def test_least_outstanding_routing(shared):
    pool = ReplicaPool(shared)
    assert len(pool.replicas) == 2
    picks = [pool.acquire()[0] for _ in range(4)]  # held, not released: each pick sees the others in flight
    assert sorted(pool.inflight().values()) == [2, 2]
    for u in picks:
        pool.release(u)
    assert set(pool.inflight().values()) == {0}


def test_requests_spread_over_replicas(client):
    client.batch(["Say a word."] * 8, concurrency=8, max_tokens=4, show_progress=False)
    import httpx
    served = []
    for url in client.pool.replicas:
        metrics = httpx.get(url[:-3] + "/metrics").text
        served.append(sum(float(l.split()[-1]) for l in metrics.splitlines()
                          if l.startswith("vllm:request_success_total")))
    assert all(n > 0 for n in served), served


def test_connect_by_model_and_copy(client, shared):
    c = notelab.connect(model="gemma-3-270m")
    assert c.worker == shared
    c2 = c.with_options(timeout=30)  # the SDK's copy keeps the routing
    assert c2.worker == shared and c2.pool is c.pool
    before = sum(c.pool.inflight().values())
    r = c2.completions.create(model=c2.model, prompt="Hi", max_tokens=3, extra_body={"ignore_eos": True})
    assert r.model == c2.model and r.usage.completion_tokens == 3  # served by the worker, through the pool
    assert sum(c.pool.inflight().values()) == before  # and released there


def test_connect_errors():
    from notelab.core import WorkerNotFoundError
    with pytest.raises(WorkerNotFoundError, match="no worker named 'ghost'"):
        notelab.connect("ghost")
    with pytest.raises(WorkerNotFoundError, match="no ready worker serves 'nope'"):
        notelab.connect(model="nope")


def test_aio_across_event_loops(client):
    async def one():
        return await client.aio.completions.create(model=client.model, prompt="Hi", max_tokens=3,
                                                   extra_body={"ignore_eos": True})
    for _ in range(2):  # a second loop gets a fresh async client, not a closed one
        r = asyncio.run(one())
        assert r.model == client.model and r.usage.completion_tokens == 3
