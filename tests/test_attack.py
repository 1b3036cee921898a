"""``tessera eval`` and its attacks: the greedy search on a transparent black-box classifier, bad input passed
through and counted, the options, and a real end-to-end evaluation of a trained run's export."""

import json

import numpy as np
import pytest

from conftest import tessera
from tessera.core.errors import ConfigError
from tessera.robustness.attacks import AttackConfig, AttackResult, GreedyAttack, Victim, summarize
from tessera.robustness.cli import parse
from tessera.robustness.lexicon import synonyms
from tessera.robustness.words import Words


class KeywordVictim(Victim):
    """A black-box classifier that is easy to reason about: each cue word raises the positive probability by
    0.25 from 0.3, so one cue makes a text positive and every cue removed lowers the score."""

    def __init__(self, cues=("good", "great")):
        self.cues, self.queries = cues, 0

    def probabilities(self, texts):
        self.queries += len(texts)
        positive = [min(0.95, 0.3 + 0.25 * sum(w in self.cues for w in Words(t.lower()).list())) for t in texts]
        return np.array([[1 - p, p] for p in positive])


def attack(kind="synonym", victim=None, **options):
    return GreedyAttack(kind, victim or KeywordVictim(), AttackConfig(similarity="none", **options))


def test_synonym_attack_replaces_the_important_word_with_a_synonym():
    result = attack().run("the acting in this film is good", 1)
    assert result.status == "success" and result.prediction == 0 and result.perturbed == 1
    changed = [(b, a) for b, a in zip(Words(result.text).list(), Words(result.adversarial).list()) if b != a]
    assert len(changed) == 1 and changed[0][0] == "good" and changed[0][1] in synonyms("good", "a")
    assert result.perturbed / result.words == pytest.approx(1 / 7)


def test_charnoise_attack_misspells_the_important_word():
    result = attack("charnoise").run("the acting in this film is great", 1)
    assert result.status == "success" and result.perturbed == 1
    changed = [(b, a) for b, a in zip(Words(result.text).list(), Words(result.adversarial).list()) if b != a]
    assert changed[0][0] == "great" and changed[0][1] != "great"


def test_the_attack_respects_the_perturbation_limit_and_the_query_budget():
    text = "a good story , great acting and good music"
    limited = attack(max_perturbed=0.1).run(text, 1)
    assert limited.status == "failed" and limited.perturbed <= 1
    full = attack(max_perturbed=1.0).run(text, 1)
    assert full.status == "success"
    starved = attack(max_perturbed=1.0, query_budget=full.queries - 2).run(text, 1)
    assert starved.status == "failed" and starved.queries < full.queries


def test_protected_words_are_never_attacked():
    result = attack(victim=KeywordVictim(cues=("not",))).run("this film is not a masterpiece", 1)
    assert result.status == "failed" and "not" in Words(result.adversarial).list()


def test_bad_input_is_passed_through_and_counted():
    cases = [("", 1), ("la película no es buena en absoluto", 1), ("!!! 123 ...", 0), ("good", 1), ("a bad film", 1)]
    results = [attack().run(text, label) for text, label in cases]
    assert [r.status for r in results] == ["skipped", "skipped", "skipped", "success", "misclassified"]
    assert all(r.adversarial == r.text for r in results[:3])
    summary = summarize(results)
    assert summary["skipped"] == {"empty": 1, "non_english": 1, "no_replaceable_word": 1}
    assert summary["misclassified"] == 1 and summary["successes"] == 1


def test_summary_metrics():
    results = [
        AttackResult("a", "b", 1, 1, 0, "success", words=10, perturbed=2),
        AttackResult("a", "a", 1, 1, 1, "failed", words=10),
        AttackResult("a", "a", 0, 1, 1, "misclassified"),
        AttackResult("a", "a", 1, 1, 1, "skipped", reason="no_replaceable_word"),
    ]
    results[0].queries, results[1].queries, results[1].exhausted, results[2].queries = 12, 30, True, 1
    summary = summarize(results)
    assert summary["clean_accuracy"] == 0.75 and summary["accuracy_under_attack"] == 0.5
    assert summary["attack_success_rate"] == 0.5 and summary["mean_perturbed_share"] == 0.2
    assert summary["mean_queries"] == 43 / 4 and summary["mean_queries_attacked"] == 21
    assert summary["mean_queries_per_success"] == 12 and summary["budget_exhausted"] == 1


class WordEncoder:
    """Word similarities from a table (1.0 for a word itself): the word-level constraint without a model."""

    def __init__(self, table):
        self.table = table

    def word_similarity(self, word, substitutes):
        return [1.0 if s == word else self.table.get((word, s), 0.0) for s in substitutes]


def test_the_word_similarity_constraint_drops_distant_substitutes():
    text = "the acting in this film is good"
    substitutes = GreedyAttack("synonym", KeywordVictim(), AttackConfig(similarity="none")).substitutes(
        Words(text).list(), 6, text
    )
    close = {("good", substitutes[-1]): 0.9}
    strict = AttackConfig(similarity="none", min_word_similarity=0.5)
    result = GreedyAttack("synonym", KeywordVictim(), strict, WordEncoder(close)).run(text, 1)
    assert result.status == "success" and Words(result.adversarial).list()[6] == substitutes[-1]
    nothing_close = GreedyAttack("synonym", KeywordVictim(), strict, WordEncoder({})).run(text, 1)
    assert nothing_close.status == "failed" and nothing_close.adversarial == text
    off = GreedyAttack("synonym", KeywordVictim(), AttackConfig(similarity="none"), WordEncoder({})).run(text, 1)
    assert off.status == "success"


def test_the_budget_that_ran_out_is_recorded():
    text = "a good story , great acting and good music"
    starved = attack(max_perturbed=1.0, query_budget=8).run(text, 1)
    assert starved.status == "failed" and starved.exhausted and starved.queries <= 8 + len(Words(text))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "atack=synonym"], "the options of tessera eval are attack, examples"),
        (["run", "attack=leetspeak"], "attack=leetspeak: choose synonym, charnoise"),
        (["run", "query_budget=many"], "query_budget"),
        (["attack=synonym"], "usage: tessera eval RUN_DIR"),
        (["run", "min_word_similarity=1.5"], "min_word_similarity are cosine similarities"),
    ],
)
def test_bad_options_are_refused(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse(argv)


def test_options_are_typed():
    run_dir, config = parse(["runs/x", "attack=synonym,charnoise", "examples=5", "similarity=none"])
    assert str(run_dir) == "runs/x" and config.examples == 5 and config.similarity == "none"


def test_a_directory_that_is_not_a_run_fails_in_one_line(tmp_path):
    result = tessera("eval", str(tmp_path), "attack=synonym")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not a complete tessera run" in lines[0]


@pytest.mark.slow
def test_attacks_on_a_trained_export(smoke_run):
    result = tessera("eval", str(smoke_run), "attack=synonym,charnoise", "examples=12", "query_budget=30")
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout)
    for kind in ("synonym", "charnoise"):
        report = json.loads((smoke_run / "attack" / kind / "report.json").read_text())
        assert report == printed[kind] and report["examples"] == 12
        assert 0 <= report["accuracy_under_attack"] <= report["clean_accuracy"] <= 1
        rows = [json.loads(line) for line in (smoke_run / "attack" / kind / "examples.jsonl").read_text().splitlines()]
        assert len(rows) == 12 and all(row["queries"] <= 30 + row["words"] for row in rows)
        assert sum(row["status"] == "success" for row in rows) == report["successes"]
        assert all(row["adversarial"] != row["text"] for row in rows if row["status"] == "success")
