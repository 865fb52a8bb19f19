// The Experiments panel: pick a notebook, fill its parameters in a form generated from its
// `parameters` cell, run it (or sweep it) as a tracked job, and follow the runs.
import { Notification } from '@jupyterlab/apputils';

import { ApiError, IParam, IRun, postJson, requestApi } from './api';
import { fmt, h, LivePanel, row } from './dom';

export interface IExperimentsHost {
  openNotebook(path: string): void;
  openMlflow(path: string): void;
  openCompare(a: string, b: string, metric: string): void;
}

/** A parameter's value from its input: numbers, booleans and JSON for the rest; strings as typed. */
function parse(kind: string, raw: string): unknown {
  if (kind === 'int' || kind === 'float') {
    return raw.trim() === '' ? null : Number(raw);
  }
  if (kind === 'str') {
    return raw;
  }
  try {
    return JSON.parse(raw);
  } catch {
    return raw;
  }
}

export class ExperimentsPanel extends LivePanel {
  constructor(private host: IExperimentsHost) {
    super();
    this.id = 'notelab-experiments';
    this.title.caption = 'notelab experiments';
    this.addClass('nl-panel');
    this.node.append(
      h('h2', {}, 'Experiments'),
      h('form', { class: 'nl-form', onsubmit: (e: Event) => { e.preventDefault(); void this.load(this.path.value); } },
        row('Notebook', this.path, 'a path under the lab root; or right-click a notebook › Run as experiment'),
        h('button', { type: 'submit', class: 'jp-mod-styled' }, 'Load parameters')),
      this.params,
      h('h3', {}, 'Runs'),
      this.compareBar,
      this.runs
    );
  }

  private path = h('input', { name: 'notebook', placeholder: 'nbs/experiments/rag_eval.ipynb' });
  private params = h('div', { 'data-testid': 'params' });
  private runs = h('div', { class: 'nl-list', 'data-testid': 'runs' });
  private inputs = new Map<string, { input: HTMLInputElement; sweep: HTMLInputElement; kind: string }>();
  private experiment = h('input', { name: 'experiment' });
  private parallel = h('input', { name: 'parallel', type: 'number', min: 1, max: 8, value: 1 });
  private error = h('div', { class: 'nl-error', 'data-testid': 'run-error' });
  private notebook = '';
  // A/B: two finished runs ticked in the table (the first ticked is A), compared on a metric both have
  private picked: string[] = [];
  private shown = new Map<string, IRun>();
  private metric = h('select', { name: 'compare-metric', title: 'a per-example column both runs logged' });
  private pickedLabel = h('span', { class: 'nl-dim' });
  private compareButton = h('button', {
    type: 'button', class: 'jp-mod-styled nl-small', 'data-action': 'compare',
    onclick: () => this.host.openCompare(this.picked[0], this.picked[1], this.metric.value)
  }, 'Compare');
  private compareBar = h('div', { class: 'nl-compare-bar', 'data-testid': 'compare-bar', hidden: true },
    this.pickedLabel, this.metric, this.compareButton);

  private pick(id: string, on: boolean): void {
    this.picked = this.picked.filter(x => x !== id);
    if (on) {
      this.picked = [...this.picked, id].slice(-2);
    }
    this.runs.querySelectorAll<HTMLInputElement>('input[data-action=pick]').forEach(box => {
      box.checked = this.picked.includes(box.closest('tr')!.dataset.run!);
    });
    this.updateCompareBar();
  }

  private updateCompareBar(): void {
    const [a, b] = this.picked.map(id => this.shown.get(id));
    this.compareBar.hidden = !a;
    if (!a) {
      return;
    }
    this.pickedLabel.textContent = b ? `A ${a.name} · B ${b.name} on` : `A ${a.name}: tick a second run (B) to compare`;
    const common = b ? Object.keys(a.metrics).filter(m => m in b.metrics) : [];
    const keep = this.metric.value;
    if (common.join() !== [...this.metric.options].map(o => o.value).join()) {
      this.metric.replaceChildren(...common.map(m => h('option', { value: m }, m)));
      if (common.includes(keep)) {
        this.metric.value = keep;
      }
    }
    this.metric.hidden = !b;
    this.compareButton.hidden = !b;
    this.compareButton.disabled = !common.length;
  }

  /** Show the form for a notebook's parameters. */
  async load(path: string): Promise<void> {
    this.path.value = path;
    this.error.textContent = '';
    let declared: Record<string, IParam>;
    try {
      declared = await requestApi<Record<string, IParam>>(`notebooks/parameters?path=${encodeURIComponent(path)}`);
    } catch (e) {
      this.params.replaceChildren(h('div', { class: 'nl-error' }, (e as Error).message));
      return;
    }
    this.notebook = path;
    this.inputs.clear();
    const stem = path.split('/').pop()!.replace(/\.ipynb$/, '');
    this.experiment.value = stem;
    const rows = Object.entries(declared).map(([name, p]) => {
      const isBool = p.type === 'bool';
      const input = h('input', { name: `param-${name}`, type: isBool ? 'checkbox' : p.type === 'int' || p.type === 'float' ? 'number' : 'text' });
      if (p.type === 'float') {
        input.step = 'any';
      }
      if (isBool) {
        input.checked = Boolean(p.default);
      } else {
        input.value = typeof p.default === 'string' ? p.default : JSON.stringify(p.default);
      }
      const sweep = h('input', { name: `sweep-${name}`, class: 'nl-sweep', placeholder: 'sweep: v1, v2, …' });
      this.inputs.set(name, { input, sweep, kind: p.type });
      return row(name, h('span', { class: 'nl-param' }, input, sweep), `${p.type}${p.help ? ' · ' + p.help : ''}`);
    });
    this.params.replaceChildren(
      h('form', { class: 'nl-form', 'data-testid': 'param-form', onsubmit: (e: Event) => { e.preventDefault(); void this.run(); } },
        h('div', { class: 'nl-dim' }, `Parameters of ${path}`),
        ...rows,
        row('Experiment', this.experiment),
        row('Sweep: at a time', this.parallel),
        h('div', { class: 'nl-actions' },
          h('button', { type: 'submit', class: 'jp-mod-styled jp-mod-accept', 'data-action': 'run' }, 'Run'),
          h('button', { type: 'button', class: 'jp-mod-styled', 'data-action': 'sweep', onclick: () => void this.sweep() }, 'Sweep')),
        this.error)
    );
    void this.refresh();
  }

  private values(): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    for (const [name, { input, kind }] of this.inputs) {
      out[name] = kind === 'bool' ? input.checked : parse(kind, input.value);
    }
    return out;
  }

  private showError(e: unknown): void {
    const err = e as ApiError;
    this.error.textContent = err.message;
    const name = (err.field ?? '').replace(/^(params|grid)\./, '');
    this.inputs.get(name)?.input.classList.add('nl-invalid');
  }

  async run(): Promise<void> {
    this.error.textContent = '';
    this.params.querySelectorAll('.nl-invalid').forEach(el => el.classList.remove('nl-invalid'));
    try {
      const r = await postJson<IRun>('runs', { notebook: this.notebook, params: this.values(), experiment: this.experiment.value });
      Notification.info(`Run ${r.run_id.slice(0, 8)} of ${this.notebook} started`, { autoClose: 3000 });
      await this.refresh();
    } catch (e) {
      this.showError(e);
    }
  }

  async sweep(): Promise<void> {
    this.error.textContent = '';
    const grid: Record<string, unknown[]> = {};
    for (const [name, { sweep, kind }] of this.inputs) {
      if (sweep.value.trim()) {
        grid[name] = sweep.value.split(',').map(v => (kind === 'bool' ? v.trim() === 'true' : parse(kind, v.trim())));
      }
    }
    if (!Object.keys(grid).length) {
      this.error.textContent = 'Sweep: give values (comma-separated) to at least one parameter.';
      return;
    }
    const fixed = this.values();
    Object.keys(grid).forEach(k => delete fixed[k]);
    try {
      const r = await postJson<{ variants: number }>('sweeps', {
        notebook: this.notebook, grid, params: fixed, experiment: this.experiment.value, parallel: Number(this.parallel.value)
      });
      Notification.info(`Sweep of ${r.variants} variants started`, { autoClose: 3000 });
      await this.refresh();
    } catch (e) {
      this.showError(e);
    }
  }

  /** Cancel a run (a sweep: with all its variants); it ends KILLED. */
  async stop(r: IRun): Promise<void> {
    try {
      const done = await postJson<IRun>(`runs/${encodeURIComponent(r.run_id)}/cancel`, {});
      Notification.info(`${done.name}: ${done.status}`, { autoClose: 3000 });
    } catch (e) {
      Notification.error(`Could not stop ${r.name}: ${(e as Error).message}`, { autoClose: 5000 });
    }
    await this.refresh();
  }

  async refresh(): Promise<void> {
    // the runs of the loaded notebook's experiment; of every experiment before one is loaded
    const experiment = this.notebook ? this.experiment.value.trim() : '';
    let runs: IRun[];
    try {
      runs = await requestApi<IRun[]>(`runs?limit=30${experiment ? '&experiment=' + encodeURIComponent(experiment) : ''}`);
    } catch (e) {
      const missing = experiment && (e as ApiError).status === 400 && /no experiment/.test((e as Error).message);
      this.runs.replaceChildren(missing
        ? h('div', { class: 'nl-empty' }, `No runs in ${experiment} yet.`)
        : h('div', { class: 'nl-error' }, (e as Error).message));
      return;
    }
    this.shown = new Map(runs.map(r => [r.run_id, r]));
    this.picked = this.picked.filter(id => this.shown.get(id)?.status === 'FINISHED');
    this.updateCompareBar();
    const head = h('tr', {}, ...['', 'run', 'status', 's', 'metrics', ''].map(t => h('th', {}, t)));
    const body = runs.map(r => {
      const metrics = Object.entries(r.metrics).slice(0, 4).map(([k, v]) => `${k} ${fmt(v, 3)}`).join(', ');
      return h('tr', { 'data-run': r.run_id, 'data-status': r.status },
        h('td', {}, r.status === 'FINISHED'
          ? h('input', { type: 'checkbox', 'data-action': 'pick', title: 'tick two runs to compare them (A/B)',
            checked: this.picked.includes(r.run_id),
            onchange: (e: Event) => this.pick(r.run_id, (e.target as HTMLInputElement).checked) })
          : null),
        h('td', { title: `${r.experiment} / ${r.run_id}` }, r.parent_run_id ? `↳ ${r.name}` : r.name),
        h('td', { class: `nl-status-${r.status}` }, r.status),
        h('td', {}, fmt(r.duration_s, 0)),
        h('td', { class: 'nl-metrics', title: r.error ?? '' }, r.error ? r.error.slice(0, 80) : metrics),
        h('td', {},
          r.status === 'RUNNING'
            ? h('button', { type: 'button', class: 'jp-mod-styled nl-small', 'data-action': 'stop',
              title: r.sweep ? 'stop this sweep and every variant still running' : 'stop this run (its output notebook is kept)',
              onclick: () => void this.stop(r) }, 'Stop')
            : null,
          ' ',
          r.output_path ? h('a', { href: '#', 'data-action': 'notebook', onclick: (e: Event) => { e.preventDefault(); this.host.openNotebook(r.output_path!); } }, 'notebook') : null,
          ' ',
          h('a', { href: '#', 'data-action': 'mlflow', onclick: (e: Event) => { e.preventDefault(); this.host.openMlflow(`#/experiments/${r.experiment_id}/runs/${r.run_id}`); } }, 'MLflow')));
    });
    this.runs.replaceChildren(
      runs.length ? h('table', { class: 'nl-table' }, h('thead', {}, head), h('tbody', {}, ...body)) : h('div', { class: 'nl-empty' }, 'No runs yet.')
    );
  }

}
