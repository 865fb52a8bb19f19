"""notelab as a persona in Jupyter AI's chat: Jupyter AI's own persona manager and chat model, a real knowledge base
ingested from a folder under the lab's root, and the run's shared worker."""
import asyncio
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
from jupyter_ai_persona_manager import PersonaManager
from jupyterlab_chat.models import Message
from jupyterlab_chat.websocket_model import WsChatModel
from labserver import Lab
from test_server import figures

from notelab.rag import drop_kb, ingest

ROOT = Path(__file__).resolve().parents[1]
PERSONA = "jupyter-ai-personas::notelab::NotelabPersona"
JAI = ROOT / ".venv-jai" / "bin" / "python"  # Jupyternaut's environment, on top of .venv (envs/jupyternaut.txt)
KB = "jai-notes"


@pytest.fixture
def lab(tmp_path):
    "The lab's root: notes ingested into a knowledge base, and a chat file (Jupyter AI's) in a folder of its own."
    root = tmp_path / "lab"
    (root / "notes").mkdir(parents=True)
    (root / "chats").mkdir()
    (root / "notes" / "tides.md").write_text(
        "# Tides of Lake Orvel\n\nThe tides of Lake Orvel rise twice a day, pulled by its two small moons.\n")
    (root / "notes" / "bees.md").write_text(
        "# Bees\n\nBees make honey from the nectar of flowers and store it in wax combs.\n")
    ingest(root / "notes", KB, show_progress=False)
    yield root
    drop_kb(KB)


async def send(manager: PersonaManager, body: str, **metadata) -> list[Message]:
    "A user's message, routed by the persona manager as the chat's picker routes it; the messages that answered it."
    chat = manager.chat
    before = {m.id for m in chat.get_messages()}
    tasks = asyncio.all_tasks()
    manager.on_chat_message(chat.get_id(), Message(id=uuid.uuid4().hex, body=body, time=time.time(), sender="ada",
                                                   metadata={"to_persona": PERSONA, **metadata}))
    await asyncio.gather(*(asyncio.all_tasks() - tasks))
    return [m for m in chat.get_messages() if m.id not in before and m.sender == PERSONA]


@pytest.mark.worker
@pytest.mark.asyncio
async def test_the_persona_answers_from_a_knowledge_base_with_citations(lab, shared):
    "Listed by Jupyter AI's persona manager; workers are its models; an answer cites the note, linked from the chat."
    chat = WsChatModel("chats/research.chat", lab)
    chat.load_from_file()
    manager = PersonaManager(chat=chat, root_dir=str(lab), event_loop=asyncio.get_running_loop())
    assert PERSONA in manager.personas, list(manager.personas)
    persona = manager.personas[PERSONA]
    assert persona.name == "notelab" and persona.as_user().bot
    conf = await persona.refresh()
    assert shared in [o.id for o in conf.options]
    assert KB in [o.id for o in conf.settings[0].options]

    [reply] = await send(manager, "@notelab How often do the tides of Lake Orvel rise?",
                         model={"id": shared, "settings": {"kb": KB}})
    text, _, sources = reply.body.partition("**Sources**")
    assert text.strip(), reply.body
    assert "[tides.md](../notes/tides.md)" in sources, reply.body
    assert persona.get_usage().output_tokens > 0

    # a worker or knowledge base that is not there: the answer says so and what to do; the worker is not asked
    _, _, tokens = figures(shared)
    [reply] = await send(manager, "@notelab Still there?", model={"id": "ghost"})
    assert "'ghost' is not running" in reply.body and "Workers panel" in reply.body
    [reply] = await send(manager, "@notelab Still there?", model={"id": shared, "settings": {"kb": "gone"}})
    assert "no knowledge base 'gone'" in reply.body and KB in reply.body
    assert figures(shared)[2] == tokens

    # stopped (the chat's stop button) before the worker was asked: it is not asked, and nothing is written
    done = asyncio.ensure_future(send(manager, "@notelab What do bees make?"))
    while not persona.processing:
        await asyncio.sleep(0)
    await persona.cancel_response()
    assert await done == [] and not persona.processing
    assert figures(shared)[2] == tokens
    await manager.shutdown_personas()


@pytest.mark.worker
def test_jupyternaut_answers_with_a_worker_the_lab_offers(tmp_path, shared):
    """A lab with Jupyternaut beside notelab (Jupyter AI's own persona, in its own environment): the running
    worker is one of Jupyternaut's custom models, after the user's own, reached through the lab's proxy with
    the lab's token; Jupyternaut, given it in the chat's model picker, answers through it."""
    assert JAI.exists(), "no .venv-jai: `make test` makes it (envs/jupyternaut.txt)"
    root, data = tmp_path / "lab", tmp_path / "jupyter-data"
    (root / "chats").mkdir(parents=True)
    (data / "jupyter_ai").mkdir(parents=True)
    theirs = {"id": "custom-5d0c9a3e-8f43-4a5e-b1a1-2c1f0d6b7a10/openai/gpt-4o", "name": "GPT-4o",
              "description": "my own", "model_id": "openai/gpt-4o", "params": {"api_key": "sk-mine"}}
    (data / "jupyter_ai" / "config.json").write_text(json.dumps({"custom_models": [theirs]}))
    env = {"JUPYTER_DATA_DIR": str(data), "JUPYTER_CONFIG_PATH": str(ROOT / ".venv" / "etc" / "jupyter"),
           "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # LiteLLM would fetch its price list at import
           "NOTELAB_LAB_JUPYTERNAUT_POLL_S": "0.5"}
    lab = Lab(root, tmp_path / "lab.log", env=env, python=JAI).start()
    try:
        config = f"http://127.0.0.1:{lab.port}/api/jupyternaut/config"
        deadline = time.monotonic() + 60
        while len(models := httpx.get(config, headers=lab.auth, timeout=10).json()["custom_models"]) < 2:
            assert time.monotonic() < deadline, (models, lab.log.read_text()[-3000:])
            time.sleep(0.2)
        mine, offered = models
        assert mine == theirs, models  # the user's model as it was, first
        assert offered["name"] == f"{shared} (notelab)" and offered["id"].endswith(f"/notelab/{shared}"), offered
        assert offered["params"] == {"api_base": f"http://127.0.0.1:{lab.port}/notelab/workers/{shared}/v1",
                                     "api_key": lab.token}
        assert "Jupyternaut's models now include the workers ['%s']" % shared in lab.log.read_text()
        assert (data / "jupyter_ai" / "config.json").stat().st_mode & 0o077 == 0  # it holds the lab's token

        _, _, tokens = figures(shared)
        turn = subprocess.run([str(JAI), str(Path(__file__).with_name("jupyternaut_turn.py")), str(root),
                               "chats/naut.chat", offered["id"], "In one short sentence: what colour is the sky?"],
                              capture_output=True, text=True, timeout=600, env={**os.environ, **env})
        assert turn.returncode == 0, turn.stderr[-3000:]
        [reply] = json.loads(turn.stdout.strip().splitlines()[-1])
        assert reply.strip() and not reply.startswith("Error"), reply  # e.g. vLLM's 400 without a tool parser
        assert figures(shared)[2] > tokens  # the worker wrote it, reached through the lab
    finally:
        lab.stop()
