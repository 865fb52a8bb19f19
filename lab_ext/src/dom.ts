// Small DOM helpers: the panels are plain Lumino widgets (no framework), built from these.
import { Widget } from '@lumino/widgets';

type Attrs = Record<string, string | number | boolean | undefined | ((e: Event) => void)>;

/** An element with attributes, `on*` listeners and children. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: (Node | string | null | undefined | false)[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) {
      continue;
    }
    if (typeof v === 'function') {
      el.addEventListener(k.slice(2).toLowerCase(), v);
    } else if (k in el && typeof (el as any)[k] !== 'string' && typeof v === 'boolean') {
      (el as any)[k] = v;
    } else {
      el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  for (const c of children) {
    if (c !== null && c !== undefined && c !== false) {
      el.append(c);
    }
  }
  return el;
}

/** A labelled form row. */
export function row(label: string, input: HTMLElement, hint = ''): HTMLElement {
  return h(
    'label',
    { class: 'nl-row' },
    h('span', { class: 'nl-label' }, label),
    input,
    hint ? h('span', { class: 'nl-hint' }, hint) : null
  );
}

export function fmt(x: number | null | undefined, digits = 1): string {
  return x === null || x === undefined ? '–' : x.toFixed(digits);
}

/** A side panel that refreshes itself every few seconds while it is visible, and not otherwise. */
export abstract class LivePanel extends Widget {
  abstract refresh(): Promise<void>;
  protected refreshMs = 3000;
  private timer: number | undefined;

  protected onAfterShow(): void {
    void this.refresh();
    this.timer = window.setInterval(() => void this.refresh(), this.refreshMs);
  }

  protected onAfterHide(): void {
    window.clearInterval(this.timer);
  }

  dispose(): void {
    window.clearInterval(this.timer);
    super.dispose();
  }
}
