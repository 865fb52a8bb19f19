"""One message to Jupyternaut, Jupyter AI's own persona, with a model picked in the chat's model picker, routed as
Jupyter AI's chat routes it; prints the persona's replies as a JSON list. Jupyternaut reads its custom models from
its config (JUPYTER_DATA_DIR), as the lab's. Runs in .venv-jai (tests/test_jupyter_ai.py):
`python tests/jupyternaut_turn.py ROOT CHAT MODEL_ID MESSAGE`."""
import asyncio
import json
import logging
import sys
import time
import uuid
from pathlib import Path

from jupyter_ai_jupyternaut.config import ConfigManager
from jupyter_ai_jupyternaut.jupyternaut.jupyternaut import JupyternautPersona
from jupyter_ai_persona_manager import PersonaManager
from jupyterlab_chat.models import Message
from jupyterlab_chat.websocket_model import WsChatModel


async def main(root: str, path: str, model: str, body: str) -> None:
    # what Jupyternaut's server extension does when it loads: its personas read the config through this
    JupyternautPersona.config_manager = ConfigManager(log=logging.getLogger("jupyternaut"), defaults={})
    chat = WsChatModel(path, Path(root))
    chat.load_from_file()
    manager = PersonaManager(chat=chat, root_dir=root, event_loop=asyncio.get_running_loop())
    persona = next(p for p in manager.personas if p.endswith("::JupyternautPersona"))
    before = {m.id for m in chat.get_messages()}
    tasks = asyncio.all_tasks()
    manager.on_chat_message(chat.get_id(), Message(id=uuid.uuid4().hex, body=body, time=time.time(), sender="ada",
                                                   metadata={"to_persona": persona, "model": {"id": model}}))
    await asyncio.gather(*(asyncio.all_tasks() - tasks))
    replies = [m.body for m in chat.get_messages() if m.id not in before and m.sender == persona]
    await manager.shutdown_personas()
    print(json.dumps(replies))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
