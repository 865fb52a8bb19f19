// Calls to notelab's REST API under <base_url>/notelab/api/ (documented in lab_ext/openapi.yaml).
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** An error the API answered with: its message and the field it names. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly field: string | null
  ) {
    super(message);
  }
}

const settings = () => ServerConnection.makeSettings();

export function apiUrl(path: string): string {
  return URLExt.join(settings().baseUrl, 'notelab', 'api', path);
}

/** A URL under the lab's base URL (MLflow, a worker's endpoint). */
export function labUrl(...parts: string[]): string {
  return URLExt.join(settings().baseUrl, ...parts);
}

/** The raw response of an API call (for streams). */
export async function fetchApi(path: string, init: RequestInit = {}): Promise<Response> {
  const s = settings();
  const response = await ServerConnection.makeRequest(apiUrl(path), init, s);
  if (!response.ok) {
    let body: any = {};
    try {
      body = await response.json();
    } catch {
      body = { error: response.statusText };
    }
    throw new ApiError(body.error ?? response.statusText, response.status, body.field ?? null);
  }
  return response;
}

/** A JSON API call. */
export async function requestApi<T>(path: string, init: RequestInit = {}): Promise<T> {
  const response = await fetchApi(path, init);
  const text = await response.text();
  return (text ? JSON.parse(text) : null) as T;
}

export function postJson<T>(path: string, body: unknown): Promise<T> {
  return requestApi<T>(path, { method: 'POST', body: JSON.stringify(body) });
}

export interface IReplica {
  index: number;
  port: number;
  pid: number;
  state: string;
  gpus: number[];
  log: string;
}

export interface IWorker {
  name: string;
  model: string;
  state: string;
  endpoint: string | null;
  error?: string | null;
  target?: 'local' | 'cluster';
  reason?: string;
  replicas: IReplica[];
  history?: IHistoryEntry[];
  update?: { state: 'rolling' | 'failed'; to: string; error: string | null } | null;
}

/** One line of what a worker served: its launch, an update, a rollback, or a failed update and why. */
export interface IHistoryEntry {
  event: 'launch' | 'update' | 'rollback' | 'failed';
  model: string;
  extra_args?: string[];
  at: string;
  reason?: string;
}

/** `?target=cluster` for a cluster worker's calls (local is the default). */
export function targetQuery(w: IWorker, sep = '?'): string {
  return w.target === 'cluster' ? `${sep}target=cluster` : '';
}

export interface IMetrics {
  name: string;
  state: string;
  running: number;
  waiting: number;
  kv_cache: number | null;
  tokens_per_s: number | null;
  replicas: { index: number; state: string; inflight?: number }[];
  routing: { requests: number; retries: number; failovers: number; hit: number; spill: number; miss: number } | null;
}

export interface IIngestJob {
  id: string;
  kb: string;
  state: 'running' | 'done' | 'failed';
  files: string[];
  done: number;
  total: number;
  report: {
    added: string[];
    updated: string[];
    unchanged: string[];
    removed: string[];
    failed: Record<string, string>;
    chunks: number;
    seconds: number;
    version: number | null;
  } | null;
  error: string | null;
  started: string;
  ended: string | null;
}

export interface IKnowledgeBase {
  name: string;
  embedder: string;
  documents: number;
  chunks: number;
  version: number;
  index: string;
  created: string;
  job: IIngestJob | null;
  sources?: { source: string; chunks: number; path: string | null; uploaded: boolean }[];
}

/** A search hit, with where to open it: `path` under the lab's root, or (uploaded) through the API. */
export interface IHit {
  rank: number;
  score: number;
  source: string;
  heading: string;
  text: string;
  location: string;
  loc: Record<string, number>;
  path: string | null;
  uploaded: boolean;
}

export interface IModel {
  ref: string;
  name: string;
  version: number;
  size: number;
}

/** The rules names and launches follow (`GET rules`: the library's own, so the form checks what the server will). */
export interface IRules {
  worker_name: string;
  targets: string[];
  max_replicas: number;
  max_workers: number;
  max_gpus: number;
  max_sweep_variants: number;
  default_model: string;
}

let rules: Promise<IRules> | null = null;

/** The server's rules, asked once. */
export function getRules(): Promise<IRules> {
  rules ??= requestApi<IRules>('rules').catch(e => {
    rules = null;
    throw e;
  });
  return rules;
}

export interface IParam {
  default: unknown;
  type: string;
  help: string;
}

export interface IRun {
  run_id: string;
  name: string;
  experiment: string;
  experiment_id: string;
  status: string;
  duration_s: number;
  params: Record<string, unknown>;
  metrics: Record<string, number>;
  output_notebook: string | null;
  output_path: string | null;
  parent_run_id: string | null;
  sweep?: string | null;
  error: string | null;
}

export interface IComparison {
  a: string;
  b: string;
  name_a: string;
  name_b: string;
  metric: string;
  n: number;
  mean_a: number;
  mean_b: number;
  delta: number;
  ci: [number, number];
  confidence: number;
  p_value: number;
  significant: boolean;
  unpaired: number;
  verdict: string;
  a_better: number;
  b_better: number;
  key: string | null;
  pairs: { key: string; a: number; b: number; diff: number }[];
  plot: string;
}
