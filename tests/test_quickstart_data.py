"""Tests for the synthetic quick-start corpus: German agreement checked against hand-written
expectations, plus the split files (disjoint, aligned, deterministic)."""

import importlib
import random
import sys

import pytest

from helpers import ROOT

if str(ROOT) not in sys.path:  # also work under a bare `pytest`, not only `python -m pytest`
    sys.path.insert(0, str(ROOT))
qd = importlib.import_module("quickstart_data")

ADJECTIVE, NOUN, PREPOSITION, PRONOUN, VERB = (
    qd.ADJECTIVE,
    qd.NOUN,
    qd.PREPOSITION,
    qd.PRONOUN,
    qd.VERB,
)
Clause, NounPhrase, PrepPhrase = qd.Clause, qd.NounPhrase, qd.PrepPhrase


def np_(noun, det="def", plural=False, adj=None, count=None):
    """NounPhrase from English words: np_("dog", adj="red")."""
    return NounPhrase(NOUN[noun], det, plural, ADJECTIVE[adj] if adj else None, count)


def de(noun, case, det="def", plural=False, adj=None, count=None, negative=False):
    return qd.german_np(np_(noun, det, plural, adj, count), case, negative=negative)


# --------------------------------------------------------------------------------------------
# Noun phrases


@pytest.mark.parametrize(
    ("case", "definite", "indefinite"),
    [
        ("nom", "der rote Hund", "ein roter Hund"),
        ("acc", "den roten Hund", "einen roten Hund"),
        ("dat", "dem roten Hund", "einem roten Hund"),
    ],
)
def test_masculine_singular_declension(case, definite, indefinite):
    assert de("dog", case, adj="red") == definite
    assert de("dog", case, "indef", adj="red") == indefinite


@pytest.mark.parametrize(
    ("case", "definite", "indefinite"),
    [
        ("nom", "die kleine Katze", "eine kleine Katze"),
        ("acc", "die kleine Katze", "eine kleine Katze"),
        ("dat", "der kleinen Katze", "einer kleinen Katze"),
    ],
)
def test_feminine_singular_declension(case, definite, indefinite):
    assert de("cat", case, adj="small") == definite
    assert de("cat", case, "indef", adj="small") == indefinite


@pytest.mark.parametrize(
    ("case", "definite", "indefinite"),
    [
        ("nom", "das kleine Kind", "ein kleines Kind"),
        ("acc", "das kleine Kind", "ein kleines Kind"),
        ("dat", "dem kleinen Kind", "einem kleinen Kind"),
    ],
)
def test_neuter_singular_declension(case, definite, indefinite):
    assert de("child", case, adj="small") == definite
    assert de("child", case, "indef", adj="small") == indefinite


def test_noun_phrases_without_adjective():
    assert de("man", "acc", "indef") == "einen Mann"
    assert de("woman", "dat", "indef") == "einer Frau"
    assert de("book", "nom") == "das Buch"
    assert de("teacher", "dat") == "dem Lehrer"


@pytest.mark.parametrize(
    ("case", "definite", "numbered"),
    [
        ("nom", "die roten Hunde", "zwei rote Hunde"),
        ("acc", "die roten Hunde", "zwei rote Hunde"),
        ("dat", "den roten Hunden", "zwei roten Hunden"),
    ],
)
def test_plural_declension(case, definite, numbered):
    assert de("dog", case, plural=True, adj="red") == definite
    assert de("dog", case, "num", plural=True, adj="red", count=2) == numbered


@pytest.mark.parametrize(
    ("noun", "nom_acc", "dat"),
    [
        ("book", "die Bücher", "den Büchern"),
        ("man", "die Männer", "den Männern"),
        ("woman", "die Frauen", "den Frauen"),
        ("child", "die Kinder", "den Kindern"),
        ("cat", "die Katzen", "den Katzen"),
        ("mouse", "die Mäuse", "den Mäusen"),
        ("teacher", "die Lehrer", "den Lehrern"),
        ("girl", "die Mädchen", "den Mädchen"),  # already ends in -n
        ("car", "die Autos", "den Autos"),  # -s plurals take no dative -n
        ("apple", "die Äpfel", "den Äpfeln"),
        ("city", "die Städte", "den Städten"),
    ],
)
def test_irregular_plurals_and_dative_plural_n(noun, nom_acc, dat):
    assert de(noun, "nom", plural=True) == nom_acc
    assert de(noun, "acc", plural=True) == nom_acc
    assert de(noun, "dat", plural=True) == dat


def test_numbers_two_to_twelve():
    assert de("mouse", "acc", "num", plural=True, count=3) == "drei Mäuse"
    assert de("child", "dat", "num", plural=True, adj="old", count=5) == "fünf alten Kindern"
    assert de("egg", "nom", "num", plural=True, count=12) == "zwölf Eier"
    assert qd.english_np(np_("mouse", "num", True, count=12)) == "twelve mice"


def test_kein_takes_mixed_endings():
    assert de("cat", "acc", "indef", negative=True) == "keine Katze"
    assert de("man", "acc", "indef", adj="old", negative=True) == "keinen alten Mann"
    assert de("book", "acc", "indef", adj="new", negative=True) == "kein neues Buch"
    assert de("child", "dat", "indef", adj="small", negative=True) == "keinem kleinen Kind"


def test_kein_only_for_indefinite_noun_phrases():
    with pytest.raises(ValueError):
        de("cat", "acc", negative=True)


def test_invalid_noun_phrases_are_rejected():
    with pytest.raises(ValueError):
        np_("dog", "indef", plural=True)  # bare plurals are not generated
    with pytest.raises(ValueError):
        np_("dog", "num", plural=True)  # a number needs a count
    with pytest.raises(ValueError):
        np_("dog", "num", plural=True, count=13)
    with pytest.raises(ValueError):
        de("dog", "gen")


@pytest.mark.parametrize(
    ("phrase", "expected"),
    [
        (np_("man", "indef", adj="old"), "an old man"),
        (np_("dog", "indef"), "a dog"),
        (np_("apple", "indef"), "an apple"),
        (np_("cat", "indef", adj="angry"), "an angry cat"),
        (np_("egg", "indef", adj="big"), "a big egg"),
        (np_("hat", "indef", adj="ugly"), "an ugly hat"),
        (np_("dog", "num", True, "red", 2), "two red dogs"),
        (np_("child", plural=True), "the children"),
        (np_("bus", plural=True), "the buses"),
    ],
)
def test_english_noun_phrases(phrase, expected):
    assert qd.english_np(phrase) == expected


@pytest.mark.parametrize(
    ("prep", "phrase", "expected_en", "expected_de"),
    [
        ("with", np_("child", adj="small"), "with the small child", "mit dem kleinen Kind"),
        ("with", np_("child", plural=True), "with the children", "mit den Kindern"),
        ("for", np_("woman"), "for the woman", "für die Frau"),
        ("without", np_("dog", "indef"), "without a dog", "ohne einen Hund"),
        ("for", np_("child", "num", True, "small", 4), "for four small children",
         "für vier kleine Kinder"),
        ("from", np_("teacher"), "from the teacher", "vom Lehrer"),  # von + dem
        ("from", np_("woman"), "from the woman", "von der Frau"),
        ("from", np_("man", "indef"), "from a man", "von einem Mann"),
        ("after", np_("man", adj="old"), "after the old man", "nach dem alten Mann"),
        ("out of", np_("house"), "out of the house", "aus dem Haus"),
        ("out of", np_("bag", plural=True), "out of the bags", "aus den Taschen"),
    ],
)  # fmt: skip
def test_prepositional_phrases(prep, phrase, expected_en, expected_de):
    pp = PrepPhrase(PREPOSITION[prep], phrase)
    assert qd.english_pp(pp) == expected_en
    assert qd.german_pp(pp) == expected_de


# --------------------------------------------------------------------------------------------
# Clauses


def sentence(subject, verb, obj, recipient=None, pp=None, negated=False):
    """(english, german) of a hand-built clause; a str subject is a pronoun."""
    subj = PRONOUN[subject] if isinstance(subject, str) else subject
    clause = Clause(subj, VERB[verb], obj, recipient, pp, negated)
    return qd.render_english(clause), qd.render_german(clause)


@pytest.mark.parametrize(
    ("subject", "verb", "obj", "expected_en", "expected_de"),
    [
        ("he", "see", np_("dog"), "He sees the dog.", "Er sieht den Hund."),
        ("we", "see", np_("cat"), "We see the cat.", "Wir sehen die Katze."),
        ("I", "see", np_("cat"), "I see the cat.", "Ich sehe die Katze."),
        ("she", "read", np_("book"), "She reads the book.", "Sie liest das Buch."),
        ("they", "read", np_("letter"), "They read the letter.", "Sie lesen den Brief."),
        ("it", "eat", np_("apple", "indef"), "It eats an apple.", "Es isst einen Apfel."),
        ("I", "eat", np_("egg"), "I eat the egg.", "Ich esse das Ei."),
        ("he", "drive", np_("bus"), "He drives the bus.", "Er fährt den Bus."),
        ("we", "drive", np_("car"), "We drive the car.", "Wir fahren das Auto."),
        ("she", "carry", np_("bag"), "She carries the bag.", "Sie trägt die Tasche."),
        ("he", "find", np_("key"), "He finds the key.", "Er findet den Schlüssel."),
        ("she", "have", np_("hat"), "She has the hat.", "Sie hat den Hut."),
        ("I", "have", np_("hat"), "I have the hat.", "Ich habe den Hut."),
        ("he", "look for", np_("ball"), "He looks for the ball.", "Er sucht den Ball."),
        ("they", "buy", np_("flower", "num", True, count=7), "They buy seven flowers.",
         "Sie kaufen sieben Blumen."),
    ],
)  # fmt: skip
def test_pronoun_subjects_and_verb_agreement(subject, verb, obj, expected_en, expected_de):
    assert sentence(subject, verb, obj) == (expected_en, expected_de)


def test_noun_subjects_agree_in_number():
    assert sentence(np_("dog"), "see", np_("cat")) == (
        "The dog sees the cat.",
        "Der Hund sieht die Katze.",
    )
    assert sentence(np_("dog", plural=True), "see", np_("cat")) == (
        "The dogs see the cat.",
        "Die Hunde sehen die Katze.",
    )
    assert sentence(np_("man", "indef", adj="old"), "read", np_("newspaper")) == (
        "An old man reads the newspaper.",
        "Ein alter Mann liest die Zeitung.",
    )
    assert sentence(np_("child", "num", True, "small", 3), "eat", np_("apple", plural=True)) == (
        "Three small children eat the apples.",
        "Drei kleine Kinder essen die Äpfel.",
    )


def test_negation_with_definite_object_puts_nicht_at_the_end():
    assert sentence(np_("dog"), "see", np_("cat"), negated=True) == (
        "The dog does not see the cat.",
        "Der Hund sieht die Katze nicht.",
    )
    assert sentence("we", "buy", np_("car", plural=True), negated=True) == (
        "We do not buy the cars.",
        "Wir kaufen die Autos nicht.",
    )


def test_negation_with_indefinite_object_uses_kein():
    assert sentence(np_("dog"), "see", np_("cat", "indef"), negated=True) == (
        "The dog does not see a cat.",
        "Der Hund sieht keine Katze.",
    )
    assert sentence("I", "have", np_("dog", "indef"), negated=True) == (
        "I do not have a dog.",
        "Ich habe keinen Hund.",
    )
    assert sentence("they", "eat", np_("egg", "indef", adj="old"), negated=True) == (
        "They do not eat an old egg.",
        "Sie essen kein altes Ei.",
    )


def test_ditransitive_puts_dative_before_accusative():
    assert sentence(np_("woman"), "give", np_("book"), np_("child")) == (
        "The woman gives the book to the child.",
        "Die Frau gibt dem Kind das Buch.",
    )
    assert sentence("we", "show", np_("dog", adj="red"), np_("man", "indef", adj="old")) == (
        "We show the red dog to an old man.",
        "Wir zeigen einem alten Mann den roten Hund.",
    )
    assert sentence("he", "give", np_("apple", plural=True), np_("horse", plural=True)) == (
        "He gives the apples to the horses.",
        "Er gibt den Pferden die Äpfel.",
    )


def test_negated_ditransitive():
    assert sentence(np_("woman"), "give", np_("book", "indef"), np_("child"), negated=True) == (
        "The woman does not give a book to the child.",
        "Die Frau gibt dem Kind kein Buch.",
    )
    assert sentence("I", "show", np_("letter"), np_("teacher", plural=True), negated=True) == (
        "I do not show the letter to the teachers.",
        "Ich zeige den Lehrern den Brief nicht.",
    )


def test_clauses_with_prepositional_phrases():
    pp = PrepPhrase(PREPOSITION["for"], np_("woman"))
    assert sentence(np_("man"), "buy", np_("book"), pp=pp) == (
        "The man buys the book for the woman.",
        "Der Mann kauft das Buch für die Frau.",
    )
    pp = PrepPhrase(PREPOSITION["with"], np_("child", plural=True))
    assert sentence("she", "read", np_("book", "indef"), pp=pp, negated=True) == (
        "She does not read a book with the children.",
        "Sie liest kein Buch mit den Kindern.",
    )
    pp = PrepPhrase(PREPOSITION["from"], np_("teacher", adj="old"))
    assert sentence("I", "buy", np_("ball"), pp=pp) == (
        "I buy the ball from the old teacher.",
        "Ich kaufe den Ball vom alten Lehrer.",
    )


def test_invalid_clauses_are_rejected():
    with pytest.raises(ValueError):  # "give" needs a recipient
        sentence("he", "give", np_("book"))
    with pytest.raises(ValueError):  # "see" takes none
        sentence("he", "see", np_("book"), np_("child"))
    with pytest.raises(ValueError):  # negated numbered objects are not generated
        sentence("he", "see", np_("dog", "num", True, count=2), negated=True)
    with pytest.raises(ValueError):  # nicht + adverbial is not generated
        pp = PrepPhrase(PREPOSITION["with"], np_("child"))
        sentence("he", "see", np_("dog"), pp=pp, negated=True)


# --------------------------------------------------------------------------------------------
# Generated pairs


def test_generated_pairs_are_well_formed():
    rng = random.Random(7)
    for _ in range(2000):
        en, de_ = qd.generate_pair(rng)
        for text in (en, de_):
            assert text[0].isupper() and text.endswith(".")
            assert "  " not in text and "\n" not in text and text == text.strip()
        assert 4 <= len(en.split()) <= 14


def test_english_determines_german():
    # every English sentence drawn again must come back with the same German; 50,000 draws
    # repeat enough sentences (about 2,700) for that to be a check, not a formality
    rng = random.Random(3)
    translation, repeats = {}, 0
    for _ in range(50_000):
        en, de_ = qd.generate_pair(rng)
        repeats += en in translation
        assert translation.setdefault(en, de_) == de_
    assert repeats > 1000


def test_corpus_covers_the_grammar():
    corpus = qd.generate_corpus(3000, seed=11)
    en_words = {w for en, _ in corpus for w in en[:-1].split()}
    de_text = " ".join(de_ for _, de_ in corpus)
    de_words = set(de_text.replace(".", "").split())
    assert {v.en.split()[0] for v in qd.VERBS} <= en_words
    assert {v.de_3sg for v in qd.VERBS} | {v.de_pl for v in qd.VERBS} <= de_words
    assert {n.de_sg for n in qd.NOUNS} | {n.de_pl for n in qd.NOUNS} <= de_words
    assert {de for _, de in qd.NUMBERS.values()} <= {w.lower() for w in de_words}
    for word in ("nicht.", "kein", "keine", "keinen", "vom", "mit", "für", "ohne", "aus"):
        assert word in de_text.split(), word
    assert {"ich", "er", "es", "wir"} <= {w.lower() for w in de_words}


def test_generate_corpus_is_distinct_and_deterministic():
    corpus = qd.generate_corpus(500, seed=5)
    assert len(corpus) == 500
    assert len({en for en, _ in corpus}) == 500
    assert qd.generate_corpus(500, seed=5) == corpus
    assert qd.generate_corpus(500, seed=6) != corpus
    assert qd.generate_corpus(0, seed=5) == []


# --------------------------------------------------------------------------------------------
# Split files


def read_split(directory, name):
    en = (directory / f"{name}.en").read_text(encoding="utf-8").splitlines()
    de_ = (directory / f"{name}.de").read_text(encoding="utf-8").splitlines()
    return en, de_


def test_write_splits_files_are_aligned_and_disjoint(tmp_path):
    counts = qd.write_splits(tmp_path, seed=1, n_train=300, n_valid=40, n_test=60)
    assert counts == {"train": 300, "valid": 40, "test": 60}
    pairs = {}
    for name, size in counts.items():
        en, de_ = read_split(tmp_path, name)
        assert len(en) == len(de_) == size
        pairs[name] = set(zip(en, de_, strict=True))
        assert len(pairs[name]) == size
    names = list(pairs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not pairs[a] & pairs[b], (a, b)
            assert not {en for en, _ in pairs[a]} & {en for en, _ in pairs[b]}, (a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{name}.{lang}" for name in counts for lang in ("en", "de")
    )  # no temporary files left behind


def test_write_splits_is_deterministic_per_seed(tmp_path):
    files = [f"{name}.{lang}" for name in ("train", "valid", "test") for lang in ("en", "de")]

    def write(seed, sub):
        qd.write_splits(tmp_path / sub, seed=seed, n_train=200, n_valid=20, n_test=30)
        return {f: (tmp_path / sub / f).read_bytes() for f in files}

    first = write(1234, "a")
    assert write(1234, "b") == first
    other = write(4321, "c")
    assert all(other[f] != first[f] for f in files)


def test_write_splits_overwrites_existing_files(tmp_path):
    (tmp_path / "train.en").write_text("stale\n" * 1000, encoding="utf-8")
    qd.write_splits(tmp_path, n_train=10, n_valid=2, n_test=3)
    en, de_ = read_split(tmp_path, "train")
    assert len(en) == len(de_) == 10 and "stale" not in en


def test_cli(tmp_path, capsys):
    out = tmp_path / "data" / "quickstart"
    assert qd.main(["--out", str(out), "--seed", "9", "--train", "50", "--valid", "5"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote 50/5/1000 pairs to {out}"
    assert len(read_split(out, "test")[0]) == 1000
    assert len(read_split(out, "valid")[1]) == 5
