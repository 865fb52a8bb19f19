// A/B comparison of two runs in the main area: the verdict, the paired statistics (mean delta, its
// bootstrap interval, the Wilcoxon p-value), the plot `notelab compare` draws, and the examples that
// changed most. The server does the statistics (GET compare), so the lab and the CLI agree.
import { MainAreaWidget } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { IComparison, requestApi } from './api';
import { h } from './dom';

const g = (x: number) => String(Number(x.toPrecision(4)));  // 4 significant digits, no trailing zeros
const signed = (x: number) => (x > 0 ? '+' : '') + g(x);

/** The comparison's figures as a two-column table. */
function stats(c: IComparison): HTMLElement {
  const pct = Math.round(c.confidence * 100);
  const rows: [string, string][] = [
    ['A', `${c.name_a} · mean ${g(c.mean_a)}`],
    ['B', `${c.name_b} · mean ${g(c.mean_b)}`],
    ['delta (B − A)', signed(c.delta)],
    [`${pct}% CI`, `${signed(c.ci[0])} … ${signed(c.ci[1])}`],
    ['p (Wilcoxon)', c.p_value.toPrecision(3)],
    ['examples', `${c.n} paired by ${c.key ?? 'row order'}` + (c.unpaired ? ` (${c.unpaired} without a partner)` : '')],
    ['B better / A better', `${c.b_better} / ${c.a_better} (${c.n - c.a_better - c.b_better} tied)`]
  ];
  return h('table', { class: 'nl-table nl-stats', 'data-testid': 'compare-stats' },
    h('tbody', {}, ...rows.map(([k, v]) => h('tr', { 'data-stat': k }, h('th', {}, k), h('td', {}, v)))));
}

/** The examples, largest change first (the first 50). */
function pairs(c: IComparison): HTMLElement {
  const shown = c.pairs.slice(0, 50);
  return h('div', {},
    h('h3', {}, `Examples, largest change first${c.pairs.length > shown.length ? ` (${shown.length} of ${c.pairs.length})` : ''}`),
    h('table', { class: 'nl-table', 'data-testid': 'pairs' },
      h('thead', {}, h('tr', {}, ...[c.key ?? 'row', `A ${c.metric}`, `B ${c.metric}`, 'B − A'].map(t => h('th', {}, t)))),
      h('tbody', {}, ...shown.map(p => h('tr', { class: p.diff > 0 ? 'nl-up' : p.diff < 0 ? 'nl-down' : '' },
        h('td', {}, p.key), h('td', {}, g(p.a)), h('td', {}, g(p.b)), h('td', {}, signed(p.diff)))))));
}

export function comparePanelId(a: string, b: string, metric: string): string {
  return `notelab-compare-${a.slice(0, 8)}-${b.slice(0, 8)}-${metric}`.replace(/[^\w-]/g, '_');
}

/** A main-area panel comparing runs `a` and `b` on `metric`. */
export function comparePanel(a: string, b: string, metric: string): MainAreaWidget {
  const content = new Widget();
  content.addClass('nl-panel');
  content.addClass('nl-compare');
  content.node.append(h('div', { class: 'nl-dim' }, 'Comparing…'));
  const panel = new MainAreaWidget({ content });
  panel.id = comparePanelId(a, b, metric);
  panel.title.label = `A/B ${metric}`;
  panel.title.caption = `${a} vs ${b} on ${metric}`;
  panel.title.closable = true;
  const q = new URLSearchParams({ a, b, metric });
  requestApi<IComparison>(`compare?${q}`).then(
    c => {
      panel.title.label = `A/B ${metric}: ${c.name_a} vs ${c.name_b}`;
      content.node.replaceChildren(
        h('h2', { 'data-testid': 'verdict', class: c.significant ? 'nl-significant' : '' }, c.verdict),
        stats(c),
        h('img', { class: 'nl-plot', 'data-testid': 'compare-plot', src: c.plot, alt: `paired ${c.metric}: A against B, and B − A` }),
        pairs(c));
    },
    (e: Error) => content.node.replaceChildren(h('div', { class: 'nl-error', 'data-testid': 'compare-error' }, e.message))
  );
  return panel;
}
