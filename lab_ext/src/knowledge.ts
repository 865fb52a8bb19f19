// The Knowledge panel: knowledge bases with their documents, chunks, version and embedder; create one; add
// files by upload, by drag and drop, or from the file browser ("Add to knowledge base"); watch the ingest
// and its per-file result; search, with hits that open the source at the matching place; remove a source;
// drop a knowledge base.
import { Dialog, MainAreaWidget, Notification, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { ApiError, fetchApi, IHit, IIngestJob, IKnowledgeBase, postJson, requestApi } from './api';
import { h, LivePanel } from './dom';

export interface IKnowledgeHost {
  /** Open a file under the lab's root at a line (1-based) or notebook cell. */
  openPath(path: string, loc: Record<string, number>): void;
  /** Show an uploaded source (kept under the lab's data folder) at a location. */
  openSource(kb: string, source: string, loc: Record<string, number>): void;
}

const kbPath = (kb: string, rest = '') => `knowledge/${encodeURIComponent(kb)}${rest}`;

export class KnowledgePanel extends LivePanel {
  constructor(private host: IKnowledgeHost) {
    super();
    this.id = 'notelab-knowledge';
    this.title.caption = 'notelab knowledge bases';
    this.addClass('nl-panel');
    this.node.append(
      h('h2', {}, 'Knowledge'),
      h('form', { class: 'nl-form nl-inline', 'data-testid': 'kb-create', onsubmit: (e: Event) => { e.preventDefault(); void this.create(); } },
        this.newName,
        h('button', { type: 'submit', class: 'jp-mod-styled jp-mod-accept nl-small' }, 'Create')),
      this.createError,
      this.list,
      this.detail
    );
    this.detail.hidden = true;
  }

  private newName = h('input', { name: 'kb-name', placeholder: 'new knowledge base, e.g. papers' });
  private createError = h('div', { class: 'nl-error', 'data-testid': 'kb-error' });
  private list = h('div', { class: 'nl-list', 'data-testid': 'kb-list' });
  private detail = h('div', { class: 'nl-kb-detail', 'data-testid': 'kb-detail' });
  private selected = '';
  private asked = 0;
  private job: IIngestJob | null = null;
  private jobBox = h('div', { class: 'nl-job', 'data-testid': 'kb-job' });
  private sources = h('div', { 'data-testid': 'kb-sources' });
  private query = h('input', { name: 'kb-query', placeholder: 'search this knowledge base' });
  private mode = h('select', { name: 'kb-mode' }, ...['hybrid', 'vector', 'fts'].map(m => h('option', { value: m }, m)));
  private hits = h('div', { 'data-testid': 'kb-hits' });
  private files = h('input', { type: 'file', multiple: true, hidden: true, name: 'kb-files',
    onchange: () => void this.upload([...(this.files.files ?? [])]) });
  private drop = h('div', { class: 'nl-drop', 'data-testid': 'kb-drop' },
    'Drop files here, or ',
    h('button', { type: 'button', class: 'jp-mod-styled nl-small', 'data-action': 'upload', onclick: () => this.files.click() }, 'Upload…'),
    this.files);

  /** The knowledge bases, and the one selected. */
  async refresh(): Promise<void> {
    const selected = this.selected;  // a selection made while the list was on its way is not undone by it
    const asked = ++this.asked;  // nor is a newer list by an older one that answered late
    let kbs: IKnowledgeBase[];
    try {
      kbs = await requestApi<IKnowledgeBase[]>('knowledge');
    } catch (e) {
      this.list.replaceChildren(h('div', { class: 'nl-error' }, (e as Error).message));
      return;
    }
    if (asked !== this.asked) {
      return;
    }
    this.list.replaceChildren(
      ...(kbs.length ? kbs.map(kb => this.card(kb)) : [h('div', { class: 'nl-empty' }, 'No knowledge base yet: create one above.')])
    );
    if (selected !== this.selected) {
      return;
    }
    if (this.selected && !kbs.some(kb => kb.name === this.selected)) {
      this.select('');
    } else if (this.selected) {
      await this.showDetail();
    }
  }

  private card(kb: IKnowledgeBase): HTMLElement {
    const card = h('div', { class: `nl-card nl-kb${kb.name === this.selected ? ' nl-selected' : ''}`, 'data-kb': kb.name,
      onclick: () => this.select(kb.name) },
      h('div', { class: 'nl-card-head' }, h('b', {}, kb.name),
        h('span', { class: 'nl-badge' }, kb.job ? `ingesting ${kb.job.done}/${kb.job.total}` : `v${kb.version}`)),
      h('div', { class: 'nl-figures' },
        `${kb.documents} documents · ${kb.chunks} chunks · ${kb.embedder.split('/').pop()} · ${kb.index}`));
    return card;
  }

  private select(name: string): void {
    this.selected = name;
    this.job = null;
    this.hits.replaceChildren();
    this.list.querySelectorAll('.nl-kb').forEach(el => el.classList.toggle('nl-selected', (el as HTMLElement).dataset.kb === name));
    this.detail.hidden = !name;
    if (!name) {
      return;
    }
    this.detail.replaceChildren(
      h('h3', {}, name),
      this.drop,
      this.jobBox,
      h('form', { class: 'nl-form nl-inline', 'data-testid': 'kb-search', onsubmit: (e: Event) => { e.preventDefault(); void this.search(); } },
        this.query, this.mode, h('button', { type: 'submit', class: 'jp-mod-styled nl-small' }, 'Search')),
      this.hits,
      h('h3', {}, 'Sources'),
      this.sources,
      h('div', { class: 'nl-actions' },
        h('button', { type: 'button', class: 'jp-mod-styled jp-mod-warn nl-small', 'data-action': 'drop-kb', onclick: () => void this.dropKb() },
          'Drop knowledge base'))
    );
    void this.showDetail();
  }

  private async showDetail(): Promise<void> {
    const name = this.selected;
    let kb: IKnowledgeBase;
    try {
      kb = await requestApi<IKnowledgeBase>(kbPath(name));
    } catch (e) {
      this.sources.replaceChildren(h('div', { class: 'nl-error' }, (e as Error).message));
      return;
    }
    if (name !== this.selected) {
      return;
    }
    if (kb.job) {
      this.job = kb.job;
    }
    this.showJob();
    this.sources.replaceChildren(
      kb.sources?.length
        ? h('table', { class: 'nl-table' }, h('tr', {}, h('th', {}, 'source'), h('th', {}, 'chunks'), h('th', {})),
          ...kb.sources.map(s => h('tr', { 'data-source': s.source },
            h('td', { class: 'nl-mono' }, s.path
              ? h('a', { href: '#', onclick: (e: Event) => { e.preventDefault(); this.host.openPath(s.path!, {}); } }, s.source)
              : h('a', { href: '#', onclick: (e: Event) => { e.preventDefault(); this.host.openSource(name, s.source, {}); } }, s.source)),
            h('td', {}, String(s.chunks)),
            h('td', {}, h('button', { type: 'button', class: 'jp-mod-styled nl-small', 'data-action': 'remove',
              onclick: () => void this.remove(s.source) }, 'Remove')))))
        : h('div', { class: 'nl-empty' }, 'No documents yet: drop or upload files, or right-click files in the file browser › Add to knowledge base.')
    );
  }

  /** Follow an ingest job until it ends, showing its progress and then what happened to each file. */
  async follow(kb: string, job: IIngestJob): Promise<void> {
    if (kb !== this.selected) {
      this.select(kb);
    }
    this.job = job;
    this.showJob();
    while (this.job && this.job.id === job.id && this.job.state === 'running') {
      await new Promise(r => setTimeout(r, 500));
      try {
        this.job = await requestApi<IIngestJob>(kbPath(kb, `/jobs/${job.id}`));
      } catch (e) {
        this.jobBox.replaceChildren(h('div', { class: 'nl-error' }, (e as Error).message));
        return;
      }
      this.showJob();
    }
    await this.refresh();
  }

  private showJob(): void {
    const j = this.job;
    if (!j) {
      this.jobBox.replaceChildren();
      return;
    }
    this.jobBox.dataset.state = j.state;
    if (j.state === 'running') {
      this.jobBox.replaceChildren(
        h('div', {}, `Ingesting ${j.files.length} file(s): ${j.done} of ${j.total} read`),
        h('progress', { max: Math.max(j.total, 1), value: j.done }));
      return;
    }
    if (j.state === 'failed') {
      this.jobBox.replaceChildren(h('div', { class: 'nl-error' }, `Ingest failed: ${j.error}`));
      return;
    }
    const r = j.report!;
    const failed = Object.entries(r.failed);
    this.jobBox.replaceChildren(
      h('div', { class: 'nl-dim' },
        `Ingested: ${r.added.length} added, ${r.updated.length} updated, ${r.unchanged.length} unchanged, ` +
        `${failed.length} skipped; ${r.chunks} chunks in ${r.seconds.toFixed(1)} s`),
      ...failed.map(([source, why]) => h('div', { class: 'nl-error', 'data-skipped': source }, `skipped ${source}: ${why}`)));
  }

  private async create(): Promise<void> {
    const name = this.newName.value.trim();
    this.createError.textContent = '';
    try {
      await postJson<IKnowledgeBase>('knowledge', { name });
    } catch (e) {
      this.createError.textContent = (e as Error).message;
      return;
    }
    this.newName.value = '';
    this.selected = name;
    await this.refresh();
    this.select(name);
  }

  /** Upload files into the selected knowledge base and follow their ingest. */
  async upload(files: File[]): Promise<void> {
    const kb = this.selected;
    if (!kb || !files.length) {
      return;
    }
    const form = new FormData();
    files.forEach(f => form.append('file', f, f.name));
    this.files.value = '';
    try {
      const job = await (await fetchApi(kbPath(kb, '/files'), { method: 'POST', body: form })).json() as IIngestJob;
      await this.follow(kb, job);
    } catch (e) {
      this.jobBox.replaceChildren(h('div', { class: 'nl-error' }, (e as Error).message));
    }
  }

  /** Ingest files or folders under the lab's root (the file browser's "Add to knowledge base"). */
  async add(kb: string, paths: string[]): Promise<void> {
    try {
      const job = await postJson<IIngestJob>(kbPath(kb, '/ingest'), { paths });
      await this.follow(kb, job);
    } catch (e) {
      Notification.error(`Add to ${kb}: ${(e as Error).message}`, { autoClose: 8000 });
    }
  }

  private async search(): Promise<void> {
    const kb = this.selected;
    const q = this.query.value.trim();
    if (!q) {
      return;
    }
    let hits: IHit[];
    try {
      hits = await requestApi<IHit[]>(kbPath(kb, `/search?q=${encodeURIComponent(q)}&mode=${this.mode.value}&k=5`));
    } catch (e) {
      this.hits.replaceChildren(h('div', { class: 'nl-error' }, (e as Error).message));
      return;
    }
    this.hits.replaceChildren(
      ...(hits.length ? hits.map(hit => h('div', { class: 'nl-hit', 'data-source': hit.source },
        h('a', { href: '#', class: 'nl-mono', onclick: (e: Event) => { e.preventDefault(); this.open(kb, hit); } },
          `${hit.source}${hit.location ? ' · ' + hit.location : ''}`),
        h('span', { class: 'nl-dim' }, ` ${hit.score.toFixed(3)}`),
        h('div', { class: 'nl-snippet' }, hit.text.length > 280 ? hit.text.slice(0, 280) + '…' : hit.text)))
        : [h('div', { class: 'nl-empty' }, 'Nothing found.')])
    );
  }

  private open(kb: string, hit: IHit): void {
    if (hit.path) {
      this.host.openPath(hit.path, hit.loc);
    } else {
      this.host.openSource(kb, hit.source, hit.loc);
    }
  }

  private async remove(source: string): Promise<void> {
    const kb = this.selected;
    try {
      await requestApi(kbPath(kb, `/source?source=${encodeURIComponent(source)}`), { method: 'DELETE' });
    } catch (e) {
      Notification.error((e as Error).message, { autoClose: 8000 });
    }
    await this.refresh();
  }

  private async dropKb(): Promise<void> {
    const kb = this.selected;
    const answer = await showDialog({
      title: `Drop ${kb}?`,
      body: `Its chunks and the files uploaded into it are deleted. Files under the lab's root stay.`,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Drop' })]
    });
    if (!answer.button.accept) {
      return;
    }
    try {
      await requestApi(kbPath(kb), { method: 'DELETE' });
    } catch (e) {
      Notification.error((e as Error).message, { autoClose: 8000 });
      return;
    }
    this.select('');
    await this.refresh();
  }

  protected onAfterAttach(): void {
    // drag and drop from the desktop onto the drop zone
    this.drop.addEventListener('dragover', e => {
      e.preventDefault();
      this.drop.classList.add('nl-drop-over');
    });
    this.drop.addEventListener('dragleave', () => this.drop.classList.remove('nl-drop-over'));
    this.drop.addEventListener('drop', e => {
      e.preventDefault();
      this.drop.classList.remove('nl-drop-over');
      void this.upload([...(e.dataTransfer?.files ?? [])]);
    });
  }

  /** The names of the knowledge bases (for "Add to knowledge base"). */
  async names(): Promise<string[]> {
    return (await requestApi<IKnowledgeBase[]>('knowledge')).map(kb => kb.name);
  }
}

/** An uploaded source's text in the main area, scrolled to a location and the section there marked. */
export async function sourcePanel(kb: string, source: string, loc: Record<string, number>): Promise<MainAreaWidget> {
  const body = new Widget();
  body.addClass('nl-source');
  const panel = new MainAreaWidget({ content: body });
  panel.id = `notelab-source-${kb}-${source}`.replace(/[^\w-]/g, '_');
  panel.title.label = source.split('/').pop()!;
  panel.title.caption = `${kb}: ${source}`;
  panel.title.closable = true;
  try {
    const doc = await requestApi<{ sections: { heading: string; text: string; loc: Record<string, number> }[] }>(
      kbPath(kb, `/source?source=${encodeURIComponent(source)}`));
    let target: HTMLElement | null = null;
    for (const s of doc.sections) {
      const at = Object.entries(s.loc).map(([k, v]) => `${k} ${v}`).join(', ');
      const hit = Object.keys(loc).length > 0 && Object.entries(loc).every(([k, v]) => s.loc[k] === v);
      const el = h('section', { class: hit ? 'nl-section nl-hit-here' : 'nl-section', 'data-loc': at },
        s.heading ? h('h4', {}, s.heading) : null, h('pre', {}, s.text), h('div', { class: 'nl-dim' }, at));
      body.node.append(el);
      if (hit && !target) {
        target = el;
      }
    }
    if (target) {
      requestAnimationFrame(() => target!.scrollIntoView({ block: 'center' }));
    }
  } catch (e) {
    body.node.append(h('div', { class: 'nl-error' }, e instanceof ApiError ? e.message : String(e)));
  }
  return panel;
}
