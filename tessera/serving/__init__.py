"""Serving a run's export through vLLM: ``tessera serve`` (an OpenAI-compatible server) and ``tessera predict``
(offline batch inference).

- :mod:`tessera.serving.target` finds what to serve in a run or model directory and checks that vLLM can serve it.
- :mod:`tessera.serving.settings` merges the run's ``serve`` config group with command-line overrides.
- :mod:`tessera.serving.launcher` starts vLLM in its own process group with private scratch directories.
- :mod:`tessera.serving.middleware` is tessera's layer inside vLLM's own HTTP server: request log and metrics,
  API-key checks on every route, and knowledge-graph prompt enrichment for runs with a ``kg`` retriever.
- :mod:`tessera.serving.ensemble` serves an output-space ensemble at one endpoint: each member behind its own vLLM
  server, their probabilities combined by the ensembler that made the export.
- :mod:`tessera.serving.predict` runs a file through vLLM's offline ``LLM`` API, or transformers without vLLM.
"""
