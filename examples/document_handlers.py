"""Handlers for ``document_pipeline.yaml``: topic -> async function of a ``cordtrio.Job``.

Every handler sleeps a little (a fixed delay per document, no randomness) so that the
progress display has something to show. ``extract`` fails the first attempt of the third
document on purpose; the step's ``retry`` setting runs it again.
"""

from __future__ import annotations

from typing import Any

import trio

from cordtrio import Job

FLAKY_DOCUMENT = "doc-3"
WORDS = ("trio", "nursery", "cancel", "scope", "workflow", "retry", "fan", "out", "timeline")


async def fetch(job: Job) -> dict[str, Any]:
    """Return the batch of documents to process."""
    count = int(job.input.get("count") or 8)
    source = job.input.get("source") or "inbox"
    await trio.sleep(0.3)
    documents = [
        {
            "id": f"doc-{i + 1}",
            "title": f"Document {i + 1} from {source}",
            "text": " ".join(WORDS[(i + k) % len(WORDS)] for k in range(20 + 5 * i)),
        }
        for i in range(count)
    ]
    return {"documents": documents}


async def extract(job: Job) -> dict[str, Any]:
    """Extract one document (``job.item``): word count and its most frequent words."""
    doc = job.item
    index = int(job.request.env.get("foreach_index", "0"))
    await trio.sleep(0.05 + 0.05 * (index % 4))  # 0.05-0.2 s, by position
    if doc["id"] == FLAKY_DOCUMENT and job.attempt == 1:
        raise RuntimeError(f"transient OCR failure on {doc['id']} (attempt {job.attempt})")
    words = doc["text"].split()
    counts: dict[str, int] = {}
    for word in words:
        counts[word] = counts.get(word, 0) + 1
    top = sorted(counts, key=lambda w: (-counts[w], w))[:3]
    return {"id": doc["id"], "words": len(words), "keywords": top, "attempt": job.attempt}


async def summarize(job: Job) -> dict[str, Any]:
    """Combine the per-document results (the for-each step's output: one per child)."""
    extracted = [r for r in job.input.get("extracted") or [] if isinstance(r, dict)]
    await trio.sleep(0.2)
    keywords: dict[str, int] = {}
    for result in extracted:
        for word in result["keywords"]:
            keywords[word] = keywords.get(word, 0) + 1
    return {
        "source": job.input.get("source") or "inbox",
        "documents": len(extracted),
        "words": sum(result["words"] for result in extracted),
        "keywords": sorted(keywords, key=lambda w: (-keywords[w], w))[:5],
    }


HANDLERS = {
    "job.docs.fetch": fetch,
    "job.docs.extract": extract,
    "job.docs.summarize": summarize,
}
