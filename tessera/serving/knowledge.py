"""Knowledge-graph enrichment at serving time: the run's ``kg`` retrievers rewrite every input the way they
rewrote the training examples, so a served model sees what it was trained on and clients do not change.

The retrievers' own :meth:`~tessera.core.techniques.KGRetriever.enrich` does the work (entity linking, retrieval,
injection); this module only finds the texts in OpenAI-API request bodies and puts the enriched texts back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The request bodies whose texts are enriched, by route.
ENRICHED_ROUTES = ("/v1/completions", "/v1/chat/completions", "/classify", "/pooling")


class KnowledgeFront:
    """Enriches texts and OpenAI-API request bodies with the ``kg`` retrievers of one run."""

    def __init__(self, retrievers: list, run=None):
        self.retrievers, self.run = retrievers, run

    @classmethod
    def from_run_dir(cls, run_dir: Path | str, plugins) -> KnowledgeFront:
        """The front of the run in ``run_dir``, its techniques composed from the run's saved config with
        ``plugins`` (a :class:`~tessera.core.plugins.Plugins`)."""
        from tessera.core.run import Run, compose
        from tessera.serving.target import run_config

        run = Run(compose(run_config(run_dir), plugins), Path(run_dir))
        return cls(run.composition.selected("kg"), run)

    def enrich(self, texts: list[str]) -> list[str]:
        """``texts`` with each retriever's knowledge injected, in config order."""
        examples = [{"text": text} for text in texts]
        for retriever in self.retrievers:
            examples = retriever.enrich(examples, self.run)
        return [example["text"] for example in examples]

    def rewrite(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        """The request ``body`` of ``route`` with its texts enriched (token-id prompts stay as they are)."""
        if route == "/v1/chat/completions":
            return self._rewrite_chat(body)
        field = "prompt" if route == "/v1/completions" else "input"
        value = body.get(field)
        if isinstance(value, str):
            return {**body, field: self.enrich([value])[0]}
        if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
            return {**body, field: self.enrich(value)}
        return body

    def _rewrite_chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """Enrich the text of the last user message."""
        messages = list(body.get("messages") or [])
        for index in range(len(messages) - 1, -1, -1):
            message = messages[index]
            if not isinstance(message, dict) or message.get("role") != "user":
                continue
            content = message.get("content")
            if isinstance(content, str):
                messages[index] = {**message, "content": self.enrich([content])[0]}
            elif isinstance(content, list):
                parts = [p for p in content if isinstance(p, dict) and p.get("type") == "text"]
                enriched = iter(self.enrich([p.get("text", "") for p in parts]))
                messages[index] = {
                    **message,
                    "content": [{**p, "text": next(enriched)} if p in parts else p for p in content],
                }
            return {**body, "messages": messages}
        return body
