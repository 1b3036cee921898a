"""Augmenters on real WordNet and real sentences: what each operation does, determinism, protected words, bad
input passed through and counted, the cache, and Apertium's round trip."""

import shutil

import pytest

from conftest import load_json, tessera
from tessera.core.errors import ConfigError
from tessera.plugins.augmenters import base
from tessera.plugins.augmenters.backtranslate import Backtranslate, BacktranslateConfig
from tessera.plugins.augmenters.char_noise import CharNoise, CharNoiseConfig
from tessera.plugins.augmenters.eda import Eda, EdaConfig
from tessera.plugins.augmenters.kg_substitute import KgSubstitute, KgSubstituteConfig
from tessera.robustness.lexicon import guess_pos, related, synonyms
from tessera.robustness.words import NEGATIONS, Protected, Words, screen

SENTENCES = [
    "if you sometimes like to go to the movies to have fun , wasabi is a good place to start .",
    "the film is not funny , and the actors seem bored throughout the story .",
    "a gorgeous , witty , seductive movie that doesn't ever lose its sense of wonder .",
    "the plot never makes sense and the dialogue is painfully flat .",
]
EXAMPLES = [{"text": text, "label": index % 2} for index, text in enumerate(SENTENCES)]
PROTECTED = Protected(NEGATIONS)


def protected_words(text):
    return [word.lower() for word in Words(text).list() if word in PROTECTED]


def only(**rates):
    settings = {"alpha_sr": 0.0, "alpha_ri": 0.0, "alpha_rs": 0.0, "p_rd": 0.0, **rates}
    return Eda(EdaConfig(copies=3, **settings))


# --- words, lexicon, screen ---------------------------------------------------------------------------------


def test_word_edits_keep_the_rest_of_the_text():
    assert Words("the 21st century's jean-claud mp3 don't").list() == ["the", "century's", "jean", "claud", "don't"]
    words = Words('a movie , not "good" at all.')
    assert words.list() == ["a", "movie", "not", "good", "at", "all"]
    words[3] = "fine"
    assert words.text() == 'a movie , not "fine" at all.'
    words.delete(0)
    words.insert_after(0, "film")
    words.swap(0, 1)
    assert words.text() == 'film movie , not "fine" at all.'
    words.insert_after(-1, "this")
    assert words.text() == 'this film movie , not "fine" at all.' and len(words) == 7


def test_negations_are_protected_including_contractions():
    assert {"not", "Never", "isn't", "doesn’t"} <= {w for w in ("not", "Never", "isn't", "doesn’t") if w in PROTECTED}
    assert "note" not in PROTECTED and "nothingness" not in PROTECTED


def test_screen_names_what_cannot_be_perturbed():
    assert screen("") == "empty" and screen("   ") == "empty"
    assert screen("la película no es buena en absoluto") == "non_english"
    assert screen("这部电影很好看") == "non_english"
    assert screen(SENTENCES[0]) is None


def test_synonyms_follow_the_part_of_speech_and_the_inflection():
    words = "i would like to see it".split()
    assert guess_pos(words, 2) == "v"
    verb = synonyms("like", "v")
    assert "wish" in verb and "similar" not in verb
    assert "films" in synonyms("movies", "n")
    assert "similar" in synonyms("like", "a")


def test_related_words_come_from_the_wordnet_graph():
    from tessera.graphs.wordnet import wordnet

    sense = wordnet().synsets("comedy", "n")[0]
    hypernyms = {name for parent in sense.hypernyms() for name in parent.lemma_names()}
    siblings = {n for p in sense.hypernyms() for s in p.hyponyms() if s != sense for n in s.lemma_names()}
    assert set(related("comedy", "n", "hypernym")) <= hypernyms and related("comedy", "n", "hypernym")
    assert set(related("comedy", "n", "co_hyponym")) <= siblings and "tragedy" in related("comedy", "n", "co_hyponym")


# --- EDA ----------------------------------------------------------------------------------------------------


def test_eda_keeps_originals_adds_copies_and_is_deterministic():
    eda = Eda(EdaConfig(copies=4))
    first, again, other = eda.augment(EXAMPLES, 7), eda.augment(EXAMPLES, 7), eda.augment(EXAMPLES, 8)
    assert first == again and first != other
    assert [e for e in first if e["text"] in SENTENCES] == EXAMPLES
    assert len(EXAMPLES) * 4 <= len(first) <= len(EXAMPLES) * 5  # distinct variants only
    assert eda.report["augmented"] == len(EXAMPLES) and eda.report["examples_out"] == len(first)
    labels = {e["text"]: e["label"] for e in EXAMPLES}
    current = None
    for example in first:
        if example["text"] in labels:
            current = example["label"]
        assert example["label"] == current


def test_synonym_replacement_swaps_words_for_wordnet_synonyms():
    import difflib

    before = Words(SENTENCES[0]).list()
    for example in only(alpha_sr=0.1).augment(EXAMPLES[:1], 0)[1:]:
        after = Words(example["text"]).list()
        changes = [op for op in difflib.SequenceMatcher(a=before, b=after).get_opcodes() if op[0] != "equal"]
        assert len(changes) == 1  # int(0.1 * 19) = 1 word
        tag, i1, i2, j1, j2 = changes[0]
        assert tag == "replace" and i2 == i1 + 1
        assert any(" ".join(after[j1:j2]) in synonyms(before[i1], pos) for pos in "nvar")


def test_random_deletion_insertion_and_swap():
    original = Words(SENTENCES[1]).list()
    for example in only(p_rd=0.3).augment(EXAMPLES[1:2], 0)[1:]:
        kept = Words(example["text"]).list()
        assert len(kept) < len(original) and _is_subsequence(kept, original)
    for example in only(alpha_rs=0.2).augment(EXAMPLES[1:2], 0)[1:]:
        assert sorted(Words(example["text"]).list()) == sorted(original)
    for example in only(alpha_ri=0.1).augment(EXAMPLES[1:2], 0)[1:]:
        assert len(Words(example["text"]).list()) == len(original) + 1


def _is_subsequence(short, long):
    iterator = iter(long)
    return all(word in iterator for word in short)


@pytest.mark.parametrize(
    "technique",
    [
        Eda(EdaConfig(copies=8, alpha_sr=0.5, alpha_ri=0.5, alpha_rs=0.5, p_rd=0.5)),
        CharNoise(CharNoiseConfig(copies=8, word_rate=1.0)),
        KgSubstitute(KgSubstituteConfig(copies=8, rate=1.0)),
    ],
)
def test_protected_words_survive_every_technique(technique):
    for example in EXAMPLES:
        for variant in technique.augment([example], 3):
            assert protected_words(variant["text"]) == protected_words(example["text"])


def test_protected_list_can_be_changed():
    eda = Eda(EdaConfig(copies=6, alpha_sr=0, alpha_ri=0, alpha_rs=0, p_rd=0.9, protected=["film", "funny"]))
    for example in eda.augment(EXAMPLES[1:2], 0)[1:]:
        words = Words(example["text"]).list()
        assert "film" in words and "funny" in words


# --- the other augmenters -------------------------------------------------------------------------------


def test_char_noise_makes_one_edit_in_chosen_words():
    noisy = CharNoise(CharNoiseConfig(copies=2, word_rate=0.2, operations=["swap"])).augment(EXAMPLES[:1], 1)
    before = Words(SENTENCES[0]).list()
    for example in noisy[1:]:
        after = Words(example["text"]).list()
        changed = [(b, a) for b, a in zip(before, after) if b != a]
        assert len(after) == len(before) and changed
        assert all(sorted(b) == sorted(a) and b[0] == a[0] for b, a in changed)


def test_kg_substitute_uses_hypernyms_or_co_hyponyms():
    augmenter = KgSubstitute(KgSubstituteConfig(copies=2, relations=["hypernym"], rate=1.0))
    for example in augmenter.augment(EXAMPLES[1:2], 0)[1:]:
        before, after = Words(SENTENCES[1]).list(), Words(example["text"]).list()
        changed = [(b, a) for b, a in zip(before, after) if b != a]
        assert changed and all(any(a in related(b, pos, "hypernym") for pos in "nv") for b, a in changed)


def test_bad_input_is_passed_through_and_counted():
    bad = [
        {"text": "", "label": 0},
        {"text": "la película no es buena en absoluto", "label": 1},
        {"text": "!!! 123 ...", "label": 0},
    ]
    for technique in (Eda(EdaConfig()), CharNoise(CharNoiseConfig()), KgSubstitute(KgSubstituteConfig())):
        assert technique.augment(bad + EXAMPLES[:1], 0)[:3] == bad
        assert technique.report["unchanged"] == {"empty": 1, "non_english": 1, "no_replaceable_word": 1}
        assert technique.report["augmented"] == 1


@pytest.mark.parametrize(
    "config, message",
    [
        (EdaConfig(copies=0), "augment.eda.copies=0"),
        (EdaConfig(alpha_sr=1.5), "augment.eda.alpha_sr=1.5 is not a rate"),
    ],
)
def test_bad_settings_are_refused(config, message):
    with pytest.raises(ConfigError, match=message):
        Eda(config).validate(None)
    with pytest.raises(ConfigError, match="choose from keyboard, swap, delete, insert"):
        CharNoise(CharNoiseConfig(operations=["smudge"])).validate(None)


def test_the_cache_returns_the_same_examples(tmp_path, monkeypatch):
    monkeypatch.setattr(base, "cache_directory", lambda: tmp_path)
    eda = Eda(EdaConfig(cache=True))
    first = eda.augment(EXAMPLES, 1)
    assert eda.report["cache"] == "miss" and len(list(tmp_path.glob("eda/*.json"))) == 1
    assert eda.augment(EXAMPLES, 1) == first and eda.report["cache"] == "hit"
    eda.augment(EXAMPLES, 2)
    assert eda.report["cache"] == "miss" and len(list(tmp_path.glob("eda/*.json"))) == 2


# --- back-translation ----------------------------------------------------------------------------------------


def test_backtranslate_names_the_packages_when_apertium_is_missing(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="apt-get install apertium apertium-eng-spa"):
        Backtranslate(BacktranslateConfig()).validate(None)


@pytest.mark.skipif(shutil.which("apertium") is None, reason="needs Debian's apertium apertium-eng-spa")
def test_apertium_round_trip_paraphrases_and_keeps_negations(tmp_path, monkeypatch):
    monkeypatch.setattr(base, "cache_directory", lambda: tmp_path)
    augmenter = Backtranslate(BacktranslateConfig())
    augmenter.validate(None)
    output = augmenter.augment(EXAMPLES, 0)
    paraphrases = [e for e in output if e not in EXAMPLES]
    assert paraphrases and augmenter.report["augmented"] == len(paraphrases)
    for example in paraphrases:
        assert example["text"] == example["text"].lower()
        original = EXAMPLES[example["label"] :: 2]
        assert any(len(protected_words(o["text"])) == len(protected_words(example["text"])) for o in original)


# --- in a composed run ---------------------------------------------------------------------------------------


def composed_run(tmp_path, *overrides):
    run_dir = tmp_path / "run"
    result = tessera(
        "train", "experiment=smoke", "data.limit_train=48", "data.limit_eval=32", *overrides, f"hydra.run.dir={run_dir}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_json(run_dir / "run.json")["status"] == "complete"
    return {path.stem: load_json(path) for path in (run_dir / "augment").glob("*.json")}


@pytest.mark.slow
def test_augmenters_chain_in_config_order_in_a_training_run(tmp_path):
    reports = composed_run(tmp_path, "augment=[eda,kg_substitute,char_noise]", "augment.eda.copies=2")
    assert reports["eda"]["examples_in"] == 48
    assert reports["kg_substitute"]["examples_in"] == reports["eda"]["examples_out"]
    assert reports["char_noise"]["examples_in"] == reports["kg_substitute"]["examples_out"]
    assert reports["char_noise"]["examples_out"] > reports["char_noise"]["examples_in"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("apertium") is None, reason="needs Debian's apertium apertium-eng-spa")
def test_eda_then_backtranslate_in_a_training_run(tmp_path):
    reports = composed_run(
        tmp_path, "augment=[eda,backtranslate]", "augment.eda.copies=1", "augment.backtranslate.cache=false"
    )
    assert reports["backtranslate"]["examples_in"] == reports["eda"]["examples_out"]
    assert reports["backtranslate"]["augmented"] > 0 and reports["backtranslate"]["cache"] == "off"
