"""The knowledge-graph subsystem.

- :mod:`~tessera.graphs.store`: :class:`~tessera.graphs.store.KnowledgeGraph`, integer ids, CSR k-hop expansion,
  networkx views, the binary cache, the memory check;
- :mod:`~tessera.graphs.loaders`: graph sources as plugins (``tessera_kg_loaders``) and ``load_graph``;
- :mod:`~tessera.graphs.rdf`: rdflib round trips (Turtle, N-Triples, RDF/XML, JSON-LD) and SPARQL;
- :mod:`~tessera.graphs.linking` and :mod:`~tessera.graphs.retrieval`: entity linking, k-hop retrieval, ranking;
- :mod:`~tessera.graphs.embeddings`: TransE / DistMult / ComplEx / RotatE (torch_geometric), filtered metrics;
- :mod:`~tessera.graphs.injection` and :mod:`~tessera.graphs.fusion`: knowledge injection into models
  (the ``kg`` techniques in :mod:`tessera.plugins.retrievers`);
- :mod:`~tessera.graphs.wordnet`: the one WordNet reader; :mod:`~tessera.graphs.cli`: ``tessera kg``.
"""
