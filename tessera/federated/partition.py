"""How the training split is shared out among federated clients: ``iid``, ``dirichlet`` or ``by_label``, seeded.

``iid`` deals the shuffled examples round-robin, so client sizes differ by at most one. ``dirichlet`` draws, for
each label, the share of each client from Dirichlet(``alpha``) (Hsu et al. 2019): a small ``alpha`` gives each client
few labels, a large one approaches IID. ``by_label`` sorts the examples by label and cuts them into equal contiguous
shards (McMahan et al. 2017's pathological non-IID split): each client sees one or two labels.
"""

from __future__ import annotations

from tessera.core.errors import ConfigError

PARTITIONS = ("iid", "dirichlet", "by_label")


def partition(examples: list[dict], clients: int, kind: str, alpha: float, seed: int) -> list[list[int]]:
    """The indices of ``examples`` each of ``clients`` clients trains on (every client gets at least one)."""
    import numpy as np

    if kind not in PARTITIONS:
        raise ConfigError(f"federated.partition={kind} is not one of {', '.join(PARTITIONS)}")
    check_clients(clients, len(examples))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(examples))
    if kind == "iid":
        shares = [order[client::clients] for client in range(clients)]
    elif kind == "by_label":
        by_label = sorted(order, key=lambda index: str(examples[index].get("label")))
        shares = np.array_split(np.array(by_label), clients)
    else:
        if alpha <= 0:
            raise ConfigError(f"federated.alpha={alpha} must be positive (smaller is less IID)")
        shares = [[] for _ in range(clients)]
        labels = sorted({str(examples[index].get("label")) for index in order})
        for label in labels:
            members = [index for index in order if str(examples[index].get("label")) == label]
            cuts = (np.cumsum(rng.dirichlet([alpha] * clients)) * len(members)).astype(int)[:-1]
            for client, part in enumerate(np.split(np.array(members), cuts)):
                shares[client].extend(part.tolist())
        _fill_empty(shares, rng)
    return [sorted(int(index) for index in share) for share in shares]


def check_clients(clients: int, examples: int) -> None:
    """Refuse fewer than one client, or more clients than training examples."""
    if clients < 1:
        raise ConfigError(f"federated.clients={clients} must be at least 1")
    if clients > examples:
        raise ConfigError(
            f"federated.clients={clients} is more than the {examples} training examples: every client needs at "
            "least one; use fewer clients or more data"
        )


def _fill_empty(shares: list[list[int]], rng) -> None:
    """Give each empty client one example from the largest (a Dirichlet draw can leave a client with nothing)."""
    for share in shares:
        if not share:
            largest = max(shares, key=len)
            share.append(largest.pop(int(rng.integers(len(largest)))))


def label_counts(examples: list[dict], shares: list[list[int]]) -> list[dict[str, int]]:
    """How many examples of each label every client holds (for the run's record)."""
    counts = []
    for share in shares:
        found: dict[str, int] = {}
        for index in share:
            label = str(examples[index].get("label"))
            found[label] = found.get(label, 0) + 1
        counts.append(dict(sorted(found.items())))
    return counts
