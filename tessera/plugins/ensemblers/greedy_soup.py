"""``greedy_soup``: the greedy model soup of Wortsman et al. (2022, "Model soups"): the members sorted by their own
validation score, each added to the soup (the average of the members kept) only if the soup's validation score does
not get worse. The members kept are in ``metrics.json`` under ``ensemble.details``."""

from __future__ import annotations

from tessera.core.techniques import WeightMerger


def validation_score(metrics: dict) -> float:
    """The score the soup maximises: the validation accuracy where the objective reports one (the first key ending
    in ``accuracy``), else minus the first loss."""
    for key, value in metrics.items():
        if key.endswith("accuracy"):
            return value
    return -next(value for key, value in metrics.items() if key.endswith("loss"))


def weighted_average(states: list[dict], weights: list[float]) -> dict:
    """The average of ``states`` with ``weights`` rescaled to sum to 1."""
    total = sum(weights)
    return {key: sum(w / total * state[key] for w, state in zip(weights, states)) for key in states[0]}


def greedy_soup(members: list[dict], weights: list[float], score) -> tuple[dict, list[int], list[float], float]:
    """The greedy soup of ``members`` under ``score(state_dict) -> float`` (higher is better): the merged state, the
    indices of the members kept in the order they were added, every member's own score, and the soup's."""
    scores = [score(state) for state in members]
    order = sorted(range(len(members)), key=lambda i: -scores[i])
    kept = [order[0]]
    soup, best = members[order[0]], scores[order[0]]
    for index in order[1:]:
        candidate = weighted_average([members[i] for i in [*kept, index]], [weights[i] for i in [*kept, index]])
        candidate_score = score(candidate)
        if candidate_score >= best:
            kept, soup, best = [*kept, index], candidate, candidate_score
    return soup, kept, scores, best


class GreedySoup(WeightMerger):
    """Adds the members, best first, to a weighted average only while its validation score does not drop."""

    name = "greedy_soup"

    def __init__(self, config):
        super().__init__(config)
        self.chosen: dict = {}

    def merge(self, members, base, context):
        def score(state):
            return validation_score(context.validate(state))

        soup, kept, scores, best = greedy_soup(members, context.weights, score)
        names = [m.name for m in context.members]
        self.chosen = {
            "kept": [names[i] for i in kept],
            "member_scores": dict(zip(names, scores)),
            "soup_score": best,
        }
        return soup

    def details(self):
        return self.chosen
