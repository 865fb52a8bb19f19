// The Workers panel: launch a vLLM worker, watch its state and live figures, open its logs,
// copy a connect snippet, scale or stop it.
import { Clipboard, Dialog, MainAreaWidget, Notification, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { ApiError, fetchApi, getRules, IHistoryEntry, IMetrics, IModel, IWorker, labUrl, postJson, requestApi, targetQuery } from './api';
import { fmt, h, LivePanel, row } from './dom';

export class WorkersPanel extends LivePanel {
  constructor(private openLogs: (w: IWorker) => void) {
    super();
    this.id = 'notelab-workers';
    this.title.caption = 'notelab workers';
    this.addClass('nl-panel');
    this.node.append(
      h('h2', {}, 'Workers'),
      this.form,
      h('h3', {}, 'Running'),
      this.list
    );
    this.buildForm();
  }

  private form = h('form', { class: 'nl-form', 'data-testid': 'launch-form' });
  private list = h('div', { class: 'nl-list', 'data-testid': 'worker-list' });
  private model = h('select', { name: 'model' });
  private name = h('input', { name: 'name', placeholder: 'worker name (default: the model name)' });
  private replicas = h('input', { name: 'replicas', type: 'number', min: 1, value: 1 });
  private target = h('select', { name: 'target' }, h('option', { value: 'local' }, 'this machine'),
    h('option', { value: 'cluster' }, 'cluster'));
  private gpus = h('input', { name: 'gpus', type: 'number', min: 0, value: 1 });
  private gpuRow = row('GPUs per replica', this.gpus);
  private extra = h('input', { name: 'extra', placeholder: 'e.g. --max-model-len 2048' });
  private error = h('div', { class: 'nl-error', 'data-testid': 'launch-error' });
  private metrics = new Map<string, IMetrics>();

  private buildForm(): void {
    this.gpuRow.hidden = true;
    this.target.addEventListener('change', () => (this.gpuRow.hidden = this.target.value !== 'cluster'));
    this.form.append(
      row('Model', this.model),
      row('Name', this.name),
      row('Replicas', this.replicas),
      row('Target', this.target),
      this.gpuRow,
      row('Engine arguments', this.extra),
      h('button', { type: 'submit', class: 'jp-mod-styled jp-mod-accept' }, 'Launch'),
      this.error
    );
    this.form.addEventListener('submit', e => {
      e.preventDefault();
      void this.launch();
    });
  }

  /** The launch request, or the first field that is wrong (shown, nothing sent): the server's own rules. */
  private async request(): Promise<Record<string, unknown> | null> {
    const rules = await getRules();
    const fail = (input: HTMLElement, msg: string) => {
      this.error.textContent = msg;
      input.classList.add('nl-invalid');
      input.focus();
      return null;
    };
    this.form.querySelectorAll('.nl-invalid').forEach(el => el.classList.remove('nl-invalid'));
    this.error.textContent = '';
    if (!this.model.value) {
      return fail(this.model, 'No model in the store: run `notelab models pull` first.');
    }
    const name = this.name.value.trim();
    if (name && !new RegExp(rules.worker_name).test(name)) {
      return fail(this.name, "Name: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 40.");
    }
    const replicas = Number(this.replicas.value);
    if (!Number.isInteger(replicas) || replicas < 1 || replicas > rules.max_replicas) {
      return fail(this.replicas, `Replicas: a whole number, 1 to ${rules.max_replicas}.`);
    }
    const body: Record<string, unknown> = {
      model: this.model.value,
      replicas,
      target: this.target.value,
      extra_args: this.extra.value.trim() ? this.extra.value.trim().split(/\s+/) : []
    };
    if (name) {
      body.name = name;
    }
    if (this.target.value === 'cluster') {
      const gpus = Number(this.gpus.value);
      if (!Number.isInteger(gpus) || gpus < 0) {
        return fail(this.gpus, 'GPUs per replica: a whole number, 0 or more.');
      }
      body.gpus_per_replica = gpus;
    }
    return body;
  }

  private async launch(): Promise<void> {
    const body = await this.request();
    if (!body) {
      return;
    }
    try {
      const w = await postJson<IWorker>('workers', body);
      Notification.info(`Starting worker ${w.name} (${w.model})`, { autoClose: 4000 });
      this.name.value = '';
      await this.refresh();
    } catch (e) {
      const err = e as ApiError;
      this.error.textContent = err.message;
      const input = this.form.querySelector(`[name="${err.field === 'gpus_per_replica' ? 'gpus' : err.field}"]`);
      input?.classList.add('nl-invalid');
    }
  }

  async loadModels(): Promise<void> {
    // newest version of each model first
    const models = (await requestApi<IModel[]>('models')).sort((a, b) => a.name.localeCompare(b.name) || b.version - a.version);
    const chosen = this.model.value;
    this.model.replaceChildren(...models.map(m => h('option', { value: m.ref }, m.ref)));
    if (chosen) {
      this.model.value = chosen;
    }
  }

  async refresh(): Promise<void> {
    let workers: IWorker[];
    try {
      workers = await requestApi<IWorker[]>('workers');
    } catch (e) {
      this.list.replaceChildren(h('div', { class: 'nl-error' }, `Cannot list workers: ${(e as Error).message}`));
      return;
    }
    await Promise.all(
      workers
        .filter(w => w.target !== 'cluster' && (w.state === 'ready' || w.state === 'degraded'))
        .map(async w => {
          try {
            this.metrics.set(w.name, await requestApi<IMetrics>(`workers/${encodeURIComponent(w.name)}/metrics`));
          } catch {
            this.metrics.delete(w.name);
          }
        })
    );
    this.list.replaceChildren(
      ...(workers.length ? workers.map(w => this.card(w)) : [h('div', { class: 'nl-empty' }, 'No workers yet.')])
    );
  }

  private card(w: IWorker): HTMLElement {
    const m = this.metrics.get(w.name);
    const live = w.state === 'ready' || w.state === 'degraded';
    const figures = live && m
      ? h('div', { class: 'nl-figures', 'data-testid': 'figures' },
        `running ${m.running} · waiting ${m.waiting} · ${fmt(m.tokens_per_s)} tok/s · KV ${m.kv_cache === null ? '–' : fmt(100 * m.kv_cache, 0) + '%'}`)
      : null;
    // the lab proxy's own routing: requests in flight per replica, and how often a prompt found its prefix's replica
    const r = live && m && m.routing ? m.routing : null;
    const routing = r
      ? h('div', { class: 'nl-figures nl-dim', 'data-testid': 'routing' },
        `in flight ${m!.replicas.map(x => `#${x.index} ${x.inflight ?? 0}`).join(' ')} · ` +
        `prefix hits ${r.hit} of ${r.hit + r.spill + r.miss} · failovers ${r.failovers}`)
      : null;
    const act = (label: string, fn: () => void, enabled = true) =>
      h('button', { class: 'jp-mod-styled nl-small', onclick: fn, disabled: !enabled, 'data-action': label }, label);
    return h(
      'div',
      { class: `nl-card nl-state-${w.state}`, 'data-worker': w.name, 'data-state': w.state },
      h('div', { class: 'nl-card-head' }, h('b', {}, w.name), h('span', { class: 'nl-badge' }, w.state)),
      h('div', { class: 'nl-dim' }, `${w.model} · ${w.replicas.length} replica(s)${w.target === 'cluster' ? ' · cluster' : ''}`),
      w.reason && !w.error ? h('div', { class: 'nl-dim' }, w.reason) : null,
      w.endpoint ? h('div', { class: 'nl-dim nl-mono' }, w.endpoint) : null,
      w.error ? h('div', { class: 'nl-error' }, w.error) : null,
      figures,
      routing,
      w.update
        ? h('div', { class: w.update.state === 'failed' ? 'nl-error' : 'nl-dim', 'data-testid': 'update' },
          w.update.state === 'failed' ? `update to ${w.update.to} failed: ${w.update.error}` : `updating to ${w.update.to}…`)
        : null,
      h('div', { class: 'nl-actions' },
        act('logs', () => this.openLogs(w), w.replicas.length > 0),
        act('snippet', () => this.copySnippet(w), live),
        act('scale', () => void this.scale(w), w.replicas.length > 0),
        w.target !== 'cluster' ? act('update', () => void this.updateWorker(w), live && w.update?.state !== 'rolling') : null,
        w.target !== 'cluster' ? act('rollback', () => void this.rollback(w), live && (w.history?.length ?? 0) > 1 && w.update?.state !== 'rolling') : null,
        w.target !== 'cluster' ? act('history', () => void this.history(w), (w.history?.length ?? 0) > 0) : null,
        act('stop', () => void this.stop(w)))
    );
  }

  private copySnippet(w: IWorker): void {
    if (w.target === 'cluster') {
      Clipboard.copyToSystem(
        `from openai import OpenAI\n# inside the cluster; the key is in the Secret ${w.name}-key\n` +
        `client = OpenAI(base_url=${JSON.stringify(w.endpoint)}, api_key=API_KEY)\n`
      );
      Notification.success(`Copied a client for ${w.name}`, { autoClose: 2500 });
      return;
    }
    const proxied = new URL(labUrl('notelab', 'workers', w.name, 'v1'), window.location.href).href;
    Clipboard.copyToSystem(
      `import notelab\nclient = notelab.connect(${JSON.stringify(w.name)})\n` +
      `print(client.ask("Hello!"))\n# from elsewhere, through the lab: OpenAI(base_url="${proxied}", api_key=<lab token>)\n`
    );
    Notification.success(`Copied notelab.connect("${w.name}")`, { autoClose: 2500 });
  }

  private async scale(w: IWorker): Promise<void> {
    const input = h('input', { type: 'number', min: 0, value: w.replicas.length });
    const body = new Widget({ node: h('div', {}, row('Replicas', input)) });
    const r = await showDialog({ title: `Scale ${w.name}`, body, buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Scale' })] });
    if (!r.button.accept) {
      return;
    }
    try {
      await postJson(`workers/${encodeURIComponent(w.name)}/scale`, { replicas: Number(input.value), target: w.target ?? 'local' });
    } catch (e) {
      Notification.error(`Scale ${w.name}: ${(e as Error).message}`);
    }
    await this.refresh();
  }

  /** Roll a worker to another version of its model: one replica at a time, no request lost. */
  private async updateWorker(w: IWorker): Promise<void> {
    const base = w.model.split('@')[0];
    const versions = (await requestApi<IModel[]>('models')).filter(m => m.name === base && m.ref !== w.model);
    if (!versions.length) {
      Notification.info(`${base} has no other version in the store (notelab models add PATH --name ${base})`);
      return;
    }
    const select = h('select', { name: 'version' }, ...versions.sort((a, b) => b.version - a.version).map(m => h('option', { value: m.ref }, m.ref)));
    const body = new Widget({ node: h('div', {}, row('Version', select, `now ${w.model}`)) });
    const r = await showDialog({ title: `Update ${w.name}`, body, buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Update' })] });
    if (!r.button.accept) {
      return;
    }
    try {
      await postJson(`workers/${encodeURIComponent(w.name)}/update`, { model: select.value });
    } catch (e) {
      Notification.error(`Update ${w.name}: ${(e as Error).message}`);
    }
    await this.refresh();
  }

  private async rollback(w: IWorker): Promise<void> {
    const served = (w.history ?? []).filter(e => e.event !== 'failed');
    const prev = served.length > 1 ? served[served.length - 2].model : '?';
    const r = await showDialog({
      title: `Roll ${w.name} back?`, body: `From ${w.model} to ${prev}, one replica at a time.`,
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Roll back' })]
    });
    if (!r.button.accept) {
      return;
    }
    try {
      await postJson(`workers/${encodeURIComponent(w.name)}/rollback`, {});
    } catch (e) {
      Notification.error(`Roll back ${w.name}: ${(e as Error).message}`);
    }
    await this.refresh();
  }

  private async history(w: IWorker): Promise<void> {
    const rows = await requestApi<IHistoryEntry[]>(`workers/${encodeURIComponent(w.name)}/history`);
    const table = h('table', { class: 'nl-table', 'data-testid': 'history' },
      h('tr', {}, ...['at', 'event', 'model', 'vLLM arguments', 'reason'].map(c => h('th', {}, c))),
      ...rows.map(e => h('tr', { class: e.event === 'failed' ? 'nl-error' : '' },
        ...[e.at, e.event, e.model, (e.extra_args ?? []).join(' '), e.reason ?? ''].map(c => h('td', {}, c)))));
    await showDialog({ title: `${w.name}: history`, body: new Widget({ node: table }), buttons: [Dialog.okButton()] });
  }

  private async stop(w: IWorker): Promise<void> {
    const r = await showDialog({
      title: `Stop ${w.name}?`,
      body: `Its ${w.replicas.length} replica(s) end and requests in flight fail.`,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Stop' })]
    });
    if (!r.button.accept) {
      return;
    }
    try {
      await requestApi(`workers/${encodeURIComponent(w.name)}${targetQuery(w)}`, { method: 'DELETE' });
    } catch (e) {
      Notification.error(`Stop ${w.name}: ${(e as Error).message}`);
    }
    await this.refresh();
  }

  protected onAfterShow(): void {
    void this.loadModels().catch(e => (this.error.textContent = `Cannot list models: ${e.message}`));
    super.onAfterShow();
  }
}

/** A worker's log, streamed into a main-area panel while it is open. */
export class LogView extends Widget {
  constructor(readonly worker: string, readonly cluster = false) {
    super();
    this.addClass('nl-log');
    this.node.append(this.pre);
    void this.follow();
  }

  private pre = h('pre', { 'data-testid': 'log' });
  private abort = new AbortController();

  private async follow(): Promise<void> {
    if (this.cluster) {  // a pod's log, as the API server has it (not followed)
      try {
        const r = await fetchApi(`workers/${encodeURIComponent(this.worker)}/logs?target=cluster&lines=500`);
        this.pre.textContent = await r.text();
      } catch (e) {
        this.pre.textContent = `[notelab: ${(e as Error).message}]`;
      }
      return;
    }
    while (!this.isDisposed) {
      try {
        const r = await fetchApi(
          `workers/${encodeURIComponent(this.worker)}/logs?follow=1&lines=${this.pre.textContent ? 0 : 200}&timeout=60`,
          { signal: this.abort.signal }
        );
        const reader = r.body!.getReader();
        const decoder = new TextDecoder();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) {
            break;
          }
          this.pre.append(decoder.decode(value, { stream: true }));
          this.node.scrollTop = this.node.scrollHeight;
        }
      } catch (e) {
        if (!this.isDisposed) {
          this.pre.append(`\n[notelab: ${(e as Error).message}]\n`);
        }
        return;
      }
    }
  }

  dispose(): void {
    this.abort.abort();
    super.dispose();
  }
}

export function logPanel(worker: string, cluster = false): MainAreaWidget<LogView> {
  const w = new MainAreaWidget({ content: new LogView(worker, cluster) });
  w.id = `notelab-log-${worker}`;
  w.title.label = `Log: ${worker}`;
  w.title.closable = true;
  return w;
}
