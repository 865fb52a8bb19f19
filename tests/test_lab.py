"""notelab in JupyterLab, end to end: `notelab lab` with the extension built by `make setup`, driven in
Debian's chromium by Playwright. A worker launched from the Workers panel becomes ready and stops; a
notebook run from the file browser's "Run as experiment" shows its metrics and output notebook, and a
sweep its variants; MLflow opens from the launcher inside the lab; the Knowledge panel creates a knowledge
base, ingests uploads and a file from the file browser, searches and opens hits; the Chat panel answers from it
with a citation that opens, and the chat saved as a notebook runs with `notelab run`. Screenshots of each panel are kept in
`test-artifacts/screenshots/`."""
import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import nbformat
import pytest

from serving import answers, until_serving

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# what a closed network needs: no background fetches, no first-run UI (see the machine notes)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
BASE = "/lab%40notelab/"  # a base URL that needs escaping: everything must work under it
# the current notebook's session holds a kernel that is connected and idle (what a Run All needs to send its cells)
KERNEL_CONNECTED = """() => {
  const k = window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel;
  return !!k && k.connectionStatus === 'connected' && k.status === 'idle';
}"""


@pytest.fixture(autouse=True)
def jp_asyncio_loop():
    """pytest-jupyter's loop fixture (autouse once test_server loads its plugin) would take the loop Playwright's
    sync API is running here as its own, and close it; here it gets a loop of its own."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def jupyter(*args) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run([str(BIN / "jupyter"), *args], capture_output=True, text=True, env=env, check=True)
    return re.sub(r"\x1b\[[0-9;]*m", "", r.stdout + r.stderr)


def test_extensions_are_enabled_and_ok():
    labext = jupyter("labextension", "list")
    assert re.search(r"notelab v[\d.]+ enabled\s+OK", labext), labext
    assert re.search(r"jupyter-server-proxy v[\d.]+ enabled\s+OK", labext), labext
    server = jupyter("server", "extension", "list")
    assert re.search(r"notelab enabled", server) and re.search(r"notelab [\d.]+ OK", server), server
    assert re.search(r"jupyter_server_proxy [\d.]+ OK", server), server


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab-root")
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell("k = 5  # how hard to try\nlabel = 'first'\nsleep = 0.0")
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# A tiny experiment"), p,
                nbformat.v4.new_code_cell("from notelab.tracking import log_examples, log_metric\nlog_metric('score', k * 2)\n"
                                          "log_examples([{'id': f'q{i}', 'score': i * k} for i in range(6)])"),
                nbformat.v4.new_code_cell("import time\ntime.sleep(sleep)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "exp.ipynb")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    log = open(root.parent / "lab.log", "wb")
    proc = subprocess.Popen([str(BIN / "notelab"), "lab", "--port", str(port), "--root", str(root), "--",
                             f"--ServerApp.token={token}", f"--ServerApp.base_url={BASE}", "--ServerApp.ip=127.0.0.1",
                             "--LabApp.expose_app_in_browser=True"],  # window.jupyterapp, for KERNEL_CONNECTED
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
    url = f"http://127.0.0.1:{port}{BASE}"
    until_serving(proc, lambda: answers(url + "api/status", params={"token": token}), "the lab", root.parent / "lab.log")
    yield SimpleNamespace(url=url, token=token, root=root, log=root.parent / "lab.log")
    os.killpg(proc.pid, signal.SIGTERM)  # the lab, and MLflow started by its proxy
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (make test installs it with apt)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(lab, browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(30_000)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{lab.url}lab?reset&token={lab.token}")  # a fresh layout each test
    page.wait_for_selector(".jp-Launcher")
    news = page.locator(".jp-toast-button", has_text="No")  # JupyterLab asks once whether to fetch its news
    try:
        news.click(timeout=3000)
    except Exception:
        pass
    yield page
    ctx.close()
    assert not errors, errors


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def api(lab, path: str):
    r = httpx.get(f"{lab.url}notelab/api/{path}", headers={"Authorization": f"token {lab.token}"}, timeout=30)
    r.raise_for_status()
    return r.json()


def test_nothing_answers_without_the_token(lab):
    for path in ("notelab/api/workers", "notelab/workers/test-shared/v1/models", "mlflow/",
                 "mlflow/ajax-api/2.0/mlflow/experiments/search"):
        r = httpx.get(lab.url + path, timeout=30)
        assert r.status_code in (302, 403), (path, r.status_code)
        assert r.status_code == 403 or "/login" in r.headers["location"], (path, r.headers)


@pytest.mark.browser
@pytest.mark.worker
@pytest.mark.slow
def test_workers_panel_launches_watches_and_stops_a_worker(page, lab, shared):
    page.locator(".jp-LauncherCard[data-category=notelab]", has_text="Workers").click()
    form = page.locator("[data-testid=launch-form]")
    form.locator("select[name=model] option").first.wait_for(state="attached")
    # bad input is stopped in the form, naming the field; nothing is launched
    form.locator("input[name=name]").fill("Bad_Name")  # the server's rule, checked in the form
    form.locator("button[type=submit]").click()
    page.locator("[data-testid=launch-error]", has_text="Name: lowercase letters").wait_for()
    assert "Bad_Name" not in [w["name"] for w in api(lab, "workers")]
    # the shared worker of this test run is listed, with live figures from its /metrics
    shared_card = page.locator(f"[data-worker='{shared}']")
    shared_card.locator("[data-testid=figures]").wait_for()
    assert re.search(r"running \d+ · waiting \d+ · .* tok/s · KV \d+%", shared_card.inner_text())
    # a completion through the lab's proxy shows in the card: requests in flight per replica, prefix hits
    proxy, auth = f"{lab.url}notelab/workers/{shared}/v1", {"Authorization": f"token {lab.token}"}
    model = httpx.get(f"{proxy}/models", headers=auth, timeout=30).json()["data"][0]["id"]
    r = httpx.post(f"{proxy}/completions", headers=auth, timeout=300,
                   json={"model": model, "prompt": "The panel shows routing. " * 20, "max_tokens": 2})
    assert r.status_code == 200, r.text
    shared_card.locator("[data-testid=routing]", has_text=re.compile(r"prefix hits \d+ of [1-9]")).wait_for()
    assert re.search(r"in flight #\d+ \d+ #\d+ \d+", shared_card.inner_text())  # one figure per replica

    form.locator("input[name=name]").fill("ui-worker")
    form.locator("input[name=replicas]").fill("1")
    form.locator("button[type=submit]").click()
    card = page.locator("[data-worker='ui-worker']")
    card.wait_for()
    shot(page, "workers-starting")
    page.wait_for_selector("[data-worker='ui-worker'][data-state='ready']", timeout=300_000)
    card.locator("[data-testid=figures]").wait_for()
    shot(page, "workers-ready")

    card.locator("[data-action=logs]").click()
    log = page.locator("#notelab-log-ui-worker [data-testid=log]")
    log.wait_for()
    page.wait_for_function("() => document.querySelector('#notelab-log-ui-worker pre').textContent.includes('notelab: starting replica')")
    shot(page, "worker-logs")

    card.locator("[data-action=stop]").click()
    page.locator(".jp-Dialog-button.jp-mod-warn").click()  # the confirmation
    card.wait_for(state="detached", timeout=60_000)
    assert "ui-worker" not in [w["name"] for w in api(lab, "workers")]


@pytest.mark.browser
def test_run_as_experiment_from_the_file_browser(page, lab):
    item = page.locator(".jp-DirListing-item[data-file-type='notebook']", has_text="exp.ipynb")
    item.click(button="right")
    page.locator(".lm-Menu-item", has_text="Run as experiment").click()
    form = page.locator("[data-testid=param-form]")
    form.wait_for()
    assert form.locator("input[name=param-k]").input_value() == "5"
    assert "how hard to try" in form.inner_text()  # the parameter's comment is its help
    form.locator("input[name=param-k]").fill("7")
    form.locator("[data-action=run]").click()
    # the panel lists the runs of the notebook's experiment (other experiments of this store stay out)
    row = page.locator("[data-testid=runs] tr[data-status=FINISHED]", has_text="score 14.000")
    row.wait_for(timeout=120_000)
    assert page.locator("[data-testid=runs] tbody tr").count() == 1
    shot(page, "experiments-run")
    row.locator("[data-action=notebook]").click()  # the output notebook opens in the lab
    page.locator(".jp-NotebookPanel .jp-Cell", has_text="log_metric('score', k * 2)").wait_for()
    assert re.search(r"exp-[0-9a-f]{8}\.ipynb", page.locator(".lm-TabBar-tab.jp-mod-current").inner_text())

    # a sweep over two values of k: a parent run and two variants
    page.locator("[data-testid=param-form] input[name=sweep-k]").fill("1, 2")
    page.locator("[data-testid=param-form] [data-action=sweep]").click()
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=runs] tr[data-status=FINISHED]')]"
                           ".filter(r => r.textContent.startsWith('↳')).length === 2", timeout=180_000)
    text = page.locator("[data-testid=runs]").inner_text()
    assert "score 2.000" in text and "score 4.000" in text
    shot(page, "experiments-sweep")
    runs = api(lab, "runs?experiment=exp")
    assert sorted(r["metrics"].get("score") for r in runs if r["parent_run_id"]) == [2.0, 4.0]

    # A/B: tick the two variants (k=1 first, so it is A) and compare them on their per-example scores
    table = page.locator("[data-testid=runs]")
    table.locator("tr", has_text="score 2.000").locator("[data-action=pick]").check()
    assert "tick a second run" in page.locator("[data-testid=compare-bar]").inner_text()
    table.locator("tr", has_text="score 4.000").locator("[data-action=pick]").check()
    bar = page.locator("[data-testid=compare-bar]")
    assert bar.locator("select[name=compare-metric]").input_value() == "score"
    bar.locator("[data-action=compare]").click()
    stats = page.locator("[data-testid=compare-stats]")
    stats.wait_for(timeout=60_000)
    assert stats.locator("tr[data-stat='delta (B − A)'] td").inner_text() == "+2.5"
    assert stats.locator("tr[data-stat='B better / A better'] td").inner_text().startswith("5 / 0")
    assert page.locator("[data-testid=pairs] tbody tr").first.inner_text().split()[0] == "q5"  # largest change first
    page.wait_for_function("() => document.querySelector('[data-testid=compare-plot]').naturalWidth > 0")
    shot(page, "experiments-compare")

    # Stop: a run that would sleep ten minutes ends KILLED from its Stop button, its output notebook kept
    form.locator("input[name=param-sleep]").fill("600")
    form.locator("[data-action=run]").click()
    def executing() -> bool:  # papermill has written its output notebook: the notebook runs
        run = next((r for r in api(lab, "runs?experiment=exp") if r["status"] == "RUNNING"), None)
        return bool(run and run["output_path"] and (lab.root / run["output_path"]).is_file())

    while not executing():
        time.sleep(0.2)
    running = page.locator("[data-testid=runs] tr[data-status=RUNNING]")
    running.locator("[data-action=stop]").click(timeout=60_000)
    page.locator("[data-testid=runs] tr[data-status=KILLED]", has_text="cancelled by a user").wait_for(timeout=60_000)
    shot(page, "experiments-stopped")
    killed = next(r for r in api(lab, "runs?experiment=exp") if r["status"] == "KILLED")
    assert killed["error"] == "cancelled by a user" and (lab.root / killed["output_path"]).is_file()


@pytest.mark.browser
def test_mlflow_opens_from_the_launcher_inside_the_lab(page, lab):
    page.locator(".jp-LauncherCard[data-category=notelab]", has_text="MLflow").click()
    frame = page.frame_locator("#notelab-mlflow iframe")
    frame.get_by_text("Experiments").first.wait_for(timeout=120_000)  # MLflow starts on first use
    frame.get_by_role("link", name="Experiments").first.click()
    frame.get_by_text("Default").first.wait_for(timeout=60_000)  # the list of experiments, read through the proxy
    shot(page, "mlflow")
    # the UI's API calls go through the lab's proxy under its base URL
    r = httpx.post(f"{lab.url}mlflow/ajax-api/2.0/mlflow/experiments/search", json={"max_results": 50},
                   headers={"Authorization": f"token {lab.token}"}, timeout=60)
    assert r.status_code == 200 and "experiments" in r.json()


@pytest.mark.browser
@pytest.mark.worker
def test_widgets_render_and_work_in_a_lab_notebook(page, lab, shared):
    "notelab.widgets in a real notebook: the worker picker shows live figures, the search box finds hits."
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "from pathlib import Path\nfrom notelab.rag import ingest\n"
        "Path('notes').mkdir(exist_ok=True)\n"
        "Path('notes/retry.md').write_text('# Retrying\\nUse exponential backoff when a request fails.\\n')\n"
        "Path('notes/cache.md').write_text('# Caching\\nKeep results in an LRU cache to avoid recomputing them.\\n')\n"
        "ingest('notes', 'widgets-kb', show_progress=False);"),
        nbformat.v4.new_code_cell("from notelab.widgets import SearchBox, WorkerPicker\n"
                                  f"WorkerPicker({shared!r}, interval=2)"),
        nbformat.v4.new_code_cell("SearchBox('widgets-kb', k=2)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, lab.root / "widgets.ipynb")
    page.locator(".jp-DirListing-item", has_text="widgets.ipynb").dblclick()
    # A Run All before the notebook's own kernel connection is up runs nothing: JupyterLab clears a cell it cannot
    # send (no kernel on the session yet) without a word, and the status bar reads idle before that (a busy machine
    # hit it). So wait for the panel's session to hold a connected, idle kernel (the lab exposes its app to tests).
    page.wait_for_function(KERNEL_CONNECTED, timeout=90_000)
    page.locator(".jp-NotebookPanel .jp-Cell").first.click()
    page.locator(".lm-MenuBar-item", has_text="Run").click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    first_prompt = page.locator(".jp-NotebookPanel .jp-Cell .jp-InputPrompt").first
    page.wait_for_function("p => /\\[(\\*|\\d+)\\]/.test(p.textContent)", arg=first_prompt.element_handle())

    picker = page.locator(".jp-OutputArea-output .widget-vbox", has=page.locator(".widget-dropdown")).first
    picker.locator("select option", has_text=f"{shared} · ready").first.wait_for(state="attached", timeout=120_000)
    page.wait_for_function("() => [...document.querySelectorAll('.widget-html')]"
                           ".some(e => /running \\d+ · waiting \\d+ · .* tok\\/s · KV cache/.test(e.textContent))",
                           timeout=60_000)
    assert picker.locator("button", has_text="Launch").is_visible()

    search = page.locator(".widget-text input[placeholder='search…']")
    search.fill("how should a failed request be retried")
    search.press("Enter")  # the box searches when the query is committed
    hits = page.locator(".jp-OutputArea-output ol li")
    hits.first.wait_for(timeout=60_000)
    assert hits.count() == 2 and "retry.md" in hits.first.inner_text()
    shot(page, "widgets-notebook")


@pytest.fixture
def kb_files(lab):
    "A note under the lab's root for the file browser (written before the page loads), and two files to upload."
    (lab.root / "kb-notes").mkdir(exist_ok=True)
    (lab.root / "kb-notes" / "backoff.md").write_text(
        "# Retries\n\nA request that fails is retried with exponential backoff and jitter.\n\n"
        "## Limits\n\nGive up after five attempts.\n")
    up = lab.root.parent / "uploads-src"
    up.mkdir(exist_ok=True)
    (up / "caching.md").write_text("# Caching\n\nKeep results in an LRU cache so they are not computed twice.\n")
    (up / "scan.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    return up


@pytest.mark.browser
def test_knowledge_panel_creates_ingests_searches_and_drops(kb_files, page, lab):
    "The Knowledge panel: create a KB, upload two files (one unreadable, named as skipped), add one from the file "
    "browser, search, open a hit at its place in the lab and an uploaded one in a source view, remove, drop."
    page.locator(".jp-LauncherCard[data-category=notelab]", has_text="Knowledge").click()
    create = page.locator("[data-testid=kb-create]")
    create.locator("input[name=kb-name]").fill("bad name")
    create.locator("button[type=submit]").click()
    page.locator("[data-testid=kb-error]", has_text="knowledge base name 'bad name'").wait_for()
    create.locator("input[name=kb-name]").fill("papers")
    create.locator("button[type=submit]").click()
    page.locator("[data-kb=papers]").wait_for()
    detail = page.locator("[data-testid=kb-detail]")
    detail.locator("[data-testid=kb-sources] .nl-empty").wait_for()

    # two files by upload: one is read, the other is named with the reason it was skipped
    page.locator("input[name=kb-files]").set_input_files([str(kb_files / "caching.md"), str(kb_files / "scan.pdf")])
    job = page.locator("[data-testid=kb-job][data-state=done]")
    job.wait_for(timeout=180_000)
    assert "1 added" in job.inner_text() and "1 skipped" in job.inner_text()
    job.locator("[data-skipped='scan.pdf']", has_text="not a readable PDF").wait_for()
    shot(page, "knowledge-uploaded")

    # one from the file browser: right-click › Add to knowledge base › papers
    page.locator(".jp-SideBar .lm-TabBar-tab[data-id='filebrowser']").click()
    page.locator(".jp-DirListing-item", has_text="kb-notes").dblclick()
    item = page.locator(".jp-DirListing-item", has_text="backoff.md")
    item.click(button="right")
    page.locator(".lm-Menu-item", has_text="Add to knowledge base").click()
    page.locator(".jp-Dialog select").select_option("papers")
    page.locator(".jp-Dialog-button.jp-mod-accept").click()
    detail.locator("[data-testid=kb-sources] tr[data-source='kb-notes/backoff.md']").wait_for(timeout=180_000)
    assert "1 added" in page.locator("[data-testid=kb-job][data-state=done]").inner_text()
    kb = next(k for k in api(lab, "knowledge") if k["name"] == "papers")
    assert (kb["documents"], kb["job"]) == (2, None)
    page.locator("[data-kb=papers]", has_text="2 documents").wait_for()

    # search; a hit under the root opens in the lab at its line
    search = detail.locator("[data-testid=kb-search]")
    search.locator("input[name=kb-query]").fill("how many times should a failed request be retried")
    search.locator("button[type=submit]").click()
    hit = detail.locator("[data-testid=kb-hits] .nl-hit").first
    hit.wait_for(timeout=60_000)
    assert hit.get_attribute("data-source") == "kb-notes/backoff.md"
    shot(page, "knowledge-search")
    hit.locator("a").click()
    page.locator(".lm-TabBar-tab.jp-mod-current", has_text="backoff.md").wait_for()
    page.locator(".jp-FileEditor .cm-content", has_text="exponential backoff").wait_for()

    # an uploaded source opens in a source view, the hit's section marked
    search.locator("input[name=kb-query]").fill("LRU cache")
    search.locator("button[type=submit]").click()
    up = detail.locator("[data-testid=kb-hits] .nl-hit[data-source='caching.md']").first
    up.wait_for(timeout=60_000)
    up.locator("a").click()
    page.locator(".nl-source .nl-hit-here", has_text="LRU cache").wait_for()
    shot(page, "knowledge-source")

    # remove a source, then drop the knowledge base (confirmed)
    detail.locator("tr[data-source='caching.md'] [data-action=remove]").click()
    detail.locator("tr[data-source='caching.md']").wait_for(state="detached")
    detail.locator("[data-action=drop-kb]").click()
    page.locator(".jp-Dialog-button.jp-mod-warn").click()
    page.locator("[data-kb=papers]").wait_for(state="detached")
    assert "papers" not in [k["name"] for k in api(lab, "knowledge")]


@pytest.mark.browser
@pytest.mark.worker
def test_chat_answers_with_citations_and_saves_as_a_notebook(page, lab, shared):
    "The Chat panel: a question to the shared worker, grounded in a knowledge base; the answer streams, cites a "
    "source that opens in the lab; the chat saved as a notebook runs with `notelab run`."
    (lab.root / "chat-notes").mkdir(exist_ok=True)
    (lab.root / "chat-notes" / "retries.md").write_text(
        "# Retries\n\nA request that fails is retried with exponential backoff: wait 1 s, then 2 s, then 4 s.\n")
    auth = {"Authorization": f"token {lab.token}"}
    r = httpx.post(f"{lab.url}notelab/api/knowledge", json={"name": "chat-kb"}, headers=auth, timeout=60)
    assert r.status_code == 201, r.text
    job = httpx.post(f"{lab.url}notelab/api/knowledge/chat-kb/ingest", json={"paths": ["chat-notes"]}, headers=auth,
                     timeout=60).json()
    while (j := api(lab, f"knowledge/chat-kb/jobs/{job['id']}"))["state"] == "running":
        time.sleep(0.2)
    assert j["report"]["added"] == ["chat-notes/retries.md"], j
    (lab.root / "chat-notes" / "brief.yaml").write_text(
        "kind: Pipeline\nname: brief\ndefaults: {max_tokens: 16}\nagents:\n"
        "  - {name: answerer, role: custom, instructions: Answer in one short sentence.}\nsteps:\n  - answerer\n")

    page.locator(".jp-LauncherCard[data-category=notelab]", has_text="Chat").click()
    page.locator(f"select[name=chat-worker] option[value='{shared}']").wait_for(state="attached")
    page.locator("select[name=chat-kb] option[value='chat-kb']").wait_for(state="attached")
    page.locator("select[name=chat-kb]").select_option("chat-kb")
    page.locator("textarea[name=chat-input]").fill("How long does the client wait before the second retry?")
    page.locator("[data-testid=chat-form] [data-action=send]").click()
    reply = page.locator("[data-testid=chat-log] .nl-msg[data-role=assistant][data-state=done]")
    reply.wait_for(timeout=300_000)
    cite = reply.locator("[data-testid=citations] a.nl-cite[data-source='chat-notes/retries.md']")
    cite.wait_for()
    shot(page, "chat-answer")
    cite.click()  # the cited source opens in the lab
    page.locator(".lm-TabBar-tab.jp-mod-current", has_text="retries.md").wait_for()

    page.locator("[data-testid=chat-form] [data-action=save]").click()
    page.wait_for_function("() => document.querySelector('#notelab-chat').dataset.saved")
    saved = page.evaluate("() => document.querySelector('#notelab-chat').dataset.saved")
    assert saved.startswith("notelab-chats/") and (lab.root / saved).is_file()
    page.locator(".jp-NotebookPanel .jp-Cell", has_text="How long does the client wait").first.wait_for()
    shot(page, "chat-saved")
    # the saved chat is an experiment: it runs with notelab run, answering again from the same knowledge base
    r = subprocess.run([str(BIN / "notelab"), "run", str(lab.root / saved), "-p", "worker", shared, "--json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    run = json.loads(r.stdout)
    assert run["status"] == "FINISHED" and run["metrics"]["answered"] == 1.0, run

    # an agent pipeline answers instead of the knowledge base (which is set aside while one is picked)
    page.locator("#notelab-chat").wait_for()  # still open in the left sidebar
    page.locator("select[name=chat-pipeline]").select_option("chat-notes/brief.yaml")
    assert page.locator("select[name=chat-kb]").is_disabled()
    page.locator("textarea[name=chat-input]").fill("What is a retry?")
    page.locator("[data-testid=chat-form] [data-action=send]").click()
    steps = page.locator("[data-testid=chat-log] .nl-msg[data-role=assistant][data-state=done]").nth(1).locator(
        "[data-testid=steps] .nl-step-ok", has_text="answerer")
    steps.first.wait_for(timeout=300_000)
    shot(page, "chat-pipeline")
