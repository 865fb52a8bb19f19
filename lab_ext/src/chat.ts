// The Chat panel: pick a running worker and, optionally, a knowledge base or an agent pipeline (a YAML file under
// the lab's root); answers stream in; citations are
// links that open the cited source; "Save as notebook" writes the conversation as a notebook that asks each
// question again with notelab calls (a chat becomes an experiment `notelab run` can run).
import { Notification } from '@jupyterlab/apputils';

import { fetchApi, IKnowledgeBase, IWorker, postJson, requestApi } from './api';
import { h, LivePanel } from './dom';

export interface ICitation {
  n: number;
  source: string;
  location: string;
  loc: Record<string, number>;
  heading?: string;
  path?: string | null;
  uploaded?: boolean;
}

export interface IChatHost {
  openPath(path: string, loc: Record<string, number>): void;
  openSource(kb: string, source: string, loc: Record<string, number>): void;
  openNotebook(path: string): void;
}

interface IStep {
  path: string;
  name: string;
  kind: string;
  status: string;
  seconds: number;
}

interface IMessage {
  role: 'user' | 'assistant';
  content: string;
}

export class ChatPanel extends LivePanel {
  constructor(private host: IChatHost) {
    super();
    this.id = 'notelab-chat';
    this.title.caption = 'notelab chat';
    this.addClass('nl-panel');
    this.addClass('nl-chat');
    this.refreshMs = 10000;
    this.node.append(
      h('h2', {}, 'Chat'),
      h('div', { class: 'nl-form' },
        h('label', { class: 'nl-row' }, h('span', { class: 'nl-label' }, 'Worker'), this.worker),
        h('label', { class: 'nl-row' }, h('span', { class: 'nl-label' }, 'Knowledge base'), this.kb),
        h('label', { class: 'nl-row' }, h('span', { class: 'nl-label' }, 'Pipeline'), this.pipeline)),
      this.log,
      h('form', { class: 'nl-form', 'data-testid': 'chat-form', onsubmit: (e: Event) => { e.preventDefault(); void this.send(); } },
        this.input,
        h('div', { class: 'nl-actions' },
          h('button', { type: 'submit', class: 'jp-mod-styled jp-mod-accept nl-small', 'data-action': 'send' }, 'Send'),
          h('button', { type: 'button', class: 'jp-mod-styled nl-small', 'data-action': 'save',
            onclick: () => void this.save() }, 'Save as notebook'),
          h('button', { type: 'button', class: 'jp-mod-styled nl-small', 'data-action': 'clear',
            onclick: () => { this.messages = []; this.log.replaceChildren(); } }, 'Clear'))),
      this.error
    );
  }

  private worker = h('select', { name: 'chat-worker' });
  private kb = h('select', { name: 'chat-kb' });
  // a knowledge base or a pipeline answers, not both: picking a pipeline sets the knowledge base aside
  private pipeline = h('select', { name: 'chat-pipeline', onchange: () => this.exclusive() });
  private log = h('div', { class: 'nl-chat-log', 'data-testid': 'chat-log' });
  private input = h('textarea', { name: 'chat-input', rows: 3, placeholder: 'Ask a question (Enter sends, Shift+Enter a new line)',
    onkeydown: (e: Event) => {
      const k = e as KeyboardEvent;
      if (k.key === 'Enter' && !k.shiftKey) {
        k.preventDefault();
        void this.send();
      }
    } });
  private error = h('div', { class: 'nl-error', 'data-testid': 'chat-error' });
  private messages: IMessage[] = [];
  private busy = false;
  private controller: AbortController | null = null;

  /** The running workers and the knowledge bases to pick from. */
  async refresh(): Promise<void> {
    try {
      const [workers, kbs, flows] = await Promise.all([requestApi<IWorker[]>('workers'),
        requestApi<IKnowledgeBase[]>('knowledge'), requestApi<{ path: string; name: string }[]>('chat/pipelines')]);
      this.fill(this.worker, workers.filter(w => w.state === 'ready' || w.state === 'degraded').map(w => w.name), null);
      this.fill(this.kb, kbs.map(k => k.name), '(none: the model alone)');
      this.fill(this.pipeline, flows.map(f => f.path), '(none)');
      this.exclusive();
    } catch (e) {
      this.error.textContent = (e as Error).message;
    }
  }

  private exclusive(): void {
    this.kb.disabled = !!this.pipeline.value;
  }

  /** What answers besides the worker: {kb} or {pipeline}. */
  private source(): { kb: string | null; pipeline: string | null } {
    const pipeline = this.pipeline.value || null;
    return { kb: pipeline ? null : this.kb.value || null, pipeline };
  }

  private fill(select: HTMLSelectElement, names: string[], none: string | null): void {
    const keep = select.value;
    const options = [...(none !== null ? [['', none]] : []), ...names.map(n => [n, n])];
    if (options.map(o => o[0]).join() === [...select.options].map(o => o.value).join()) {
      return;
    }
    select.replaceChildren(...options.map(([v, label]) => h('option', { value: v }, label)));
    if (options.some(o => o[0] === keep)) {
      select.value = keep;
    }
  }

  private bubble(role: string, text: string): HTMLElement {
    const el = h('div', { class: `nl-msg nl-msg-${role}`, 'data-role': role }, h('div', { class: 'nl-msg-text' }, text));
    this.log.append(el);
    this.log.scrollTop = this.log.scrollHeight;
    return el;
  }

  /** Send the question; the answer streams into the log, then its citations. */
  async send(): Promise<void> {
    const question = this.input.value.trim();
    if (!question || this.busy) {
      return;
    }
    this.error.textContent = '';
    if (!this.worker.value) {
      this.error.textContent = 'No running worker: launch one in the Workers panel.';
      return;
    }
    this.busy = true;
    this.input.value = '';
    this.bubble('user', question);
    this.messages.push({ role: 'user', content: question });
    const reply = this.bubble('assistant', '');
    reply.dataset.state = 'streaming';
    const text = reply.querySelector('.nl-msg-text') as HTMLElement;
    const { kb, pipeline } = this.source();
    this.controller = new AbortController();
    try {
      const response = await fetchApi('chat', {
        method: 'POST', signal: this.controller.signal,
        body: JSON.stringify({ worker: this.worker.value, kb, pipeline, messages: this.messages })
      });
      const reader = response.body!.getReader();
      const decoder = new TextDecoder();
      let buffer = '';
      let done = false;
      while (!done) {
        const chunk = await reader.read();
        if (chunk.done) {
          break;
        }
        buffer += decoder.decode(chunk.value, { stream: true });
        let cut: number;
        while ((cut = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const kind = /^event: (.*)$/m.exec(block)?.[1];
          const data = JSON.parse(/^data: (.*)$/m.exec(block)?.[1] ?? '{}');
          if (kind === 'text') {
            text.textContent += data.text;
            this.log.scrollTop = this.log.scrollHeight;
          } else if (kind === 'done') {
            // a pipeline's answer as it returned it, where that differs from what streamed
            if (typeof data.output === 'string' && data.output.trim() !== (text.textContent ?? '').trim()) {
              text.textContent = data.output;
            }
            this.cite(reply, kb, data.citations ?? []);
            this.steps(reply, data.steps ?? []);
            done = true;
          } else if (kind === 'error') {
            throw new Error(data.error);
          }
        }
      }
      this.messages.push({ role: 'assistant', content: text.textContent ?? '' });
      reply.dataset.state = 'done';
    } catch (e) {
      reply.dataset.state = 'failed';
      this.error.textContent = (e as Error).message;
      this.messages.pop();
    } finally {
      this.busy = false;
      this.controller = null;
    }
  }

  private cite(reply: HTMLElement, kb: string | null, citations: ICitation[]): void {
    if (!citations.length) {
      return;
    }
    reply.append(h('div', { class: 'nl-cites', 'data-testid': 'citations' },
      ...citations.map(c => h('a', { href: '#', class: 'nl-cite', 'data-source': c.source,
        title: c.heading ?? '',
        onclick: (e: Event) => {
          e.preventDefault();
          if (c.path) {
            this.host.openPath(c.path, c.loc);
          } else if (kb) {
            this.host.openSource(kb, c.source, c.loc);
          }
        } }, `[${c.n}] ${c.source}${c.location ? ' · ' + c.location : ''}`))));
  }

  /** A pipeline's steps under its answer: where each ran, how it ended, how long it took. */
  private steps(reply: HTMLElement, steps: IStep[]): void {
    if (!steps.length) {
      return;
    }
    reply.append(h('div', { class: 'nl-steps', 'data-testid': 'steps' },
      ...steps.map(s => h('span', { class: `nl-step nl-step-${s.status}`, title: `${s.kind}: ${s.name}` },
        `${s.path || s.name} ${s.status} ${s.seconds.toFixed(1)} s`))));
  }

  /** Write the conversation as a notebook under the lab's root and open it. */
  async save(): Promise<void> {
    if (!this.messages.length) {
      this.error.textContent = 'Nothing to save yet: ask something first.';
      return;
    }
    try {
      const r = await postJson<{ path: string }>('chat/notebook', {
        worker: this.worker.value, ...this.source(), messages: this.messages
      });
      Notification.success(`Saved as ${r.path}`, { autoClose: 5000 });
      this.node.dataset.saved = r.path;
      this.host.openNotebook(r.path);
    } catch (e) {
      this.error.textContent = (e as Error).message;
    }
  }

  dispose(): void {
    this.controller?.abort();
    super.dispose();
  }
}
