"""notelab as a persona in Jupyter AI's chat: Jupyter AI's own persona manager and chat model, a real knowledge base
ingested from a folder under the lab's root, and the run's shared worker."""
import asyncio
import time
import uuid

import pytest
from jupyter_ai_persona_manager import PersonaManager
from jupyterlab_chat.models import Message
from jupyterlab_chat.websocket_model import WsChatModel
from test_server import figures

from notelab.rag import drop_kb, ingest

PERSONA = "jupyter-ai-personas::notelab::NotelabPersona"
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
