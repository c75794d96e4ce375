"""Synthetic English->German parallel corpus for the offline quick start.

The quick start has to train a small Transformer on CPU in about two minutes and then reach a
high BLEU score, so the data must be a deterministic, learnable function of the English side:
every English sentence is produced from a choice of lexicon entries and grammar options, and
exactly one German sentence is rendered from the same choices. It is still not word-for-word,
because the German side uses real agreement:

* Articles and adjective endings by gender (masculine/feminine/neuter) and case: nominative for
  subjects, accusative for direct objects and after "für"/"ohne", dative for the recipient of
  "give"/"show" and after "mit", "von", "nach", "aus". Definite articles take weak adjective
  endings (der rote Hund, den roten Hund, dem roten Hund), ein/kein take mixed endings
  (ein roter Hund, einen roten Hund, einem roten Hund), numbers take strong endings
  (zwei rote Hunde, zwei roten Hunden).
* Irregular noun plurals from the lexicon (Buch -> Bücher, Maus -> Mäuse) and the dative plural -n
  (den Kindern, but den Autos, den Mädchen), numbers two..twelve as plural quantifiers.
* Present-tense verb agreement for pronoun subjects (ich, er, sie, es, wir, sie; English "you" is
  left out because it is ambiguous) and noun subjects, including stem-changing verbs
  (sieht, gibt, liest, isst, fährt, trägt) and the irregular "hat".
* Negation: "does not / do not" becomes clause-final "nicht" for a definite object
  (Der Hund sieht die Katze nicht.) and "kein" for an indefinite object
  (Der Hund sieht keine Katze.).
* Ditransitive "give X to Y" / "show X to Y" with the German dative before the accusative
  (Die Frau gibt dem Kind das Buch.), and adverbial prepositional phrases, including the
  contraction von + dem -> vom.
* English "a"/"an" by the following word ("an old man"), irregular English plurals (men, mice).

Intentionally left out: "you", possessives, past tense, subordinate clauses, questions, bare
(article-less) plurals and "kein" with plurals, negation of numbered objects, and a "nicht"
together with a prepositional phrase (its placement there depends on focus, so such sentences
are never generated). Light selectional restrictions (only people read, only food is eaten,
colours do not describe people) keep the sentences sensible.

Usage::

    python quickstart_data.py --out data/quickstart [--seed 1234] [--train 40000] \
        [--valid 500] [--test 1000]

writes data/quickstart/{train,valid,test}.{en,de}, one sentence per line, aligned.
"""

from __future__ import annotations

import functools
import os
import random
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from config import ArgumentParser, UserError, cli

# Probabilities of the optional parts of a sentence.
PRONOUN_SUBJECT_P = 0.3
ADJECTIVE_P = 0.45  # per noun phrase
PP_P = 0.5  # per clause whose verb takes a prepositional phrase (about 0.4 overall)
NEGATION_P = 0.2

CASES = ("nom", "acc", "dat")

# Semantic kinds used for selectional restrictions (a noun may have several):
# P person, A animal, T portable thing, X text (readable), C container, F food, V vehicle,
# L place.
ALL_KINDS = "PATXCFVL"
NON_PERSON = "ATXCFVL"


# --------------------------------------------------------------------------------------------
# Lexicon


@dataclass(frozen=True)
class Noun:
    en_sg: str
    en_pl: str
    de_sg: str
    de_pl: str
    gender: str  # "m", "f" or "n"
    kinds: str

    @property
    def de_dat_pl(self) -> str:
        # The dative plural adds -n unless the plural already ends in -n or -s (den Autos).
        return self.de_pl if self.de_pl.endswith(("n", "s")) else self.de_pl + "n"


@dataclass(frozen=True)
class Adjective:
    en: str
    de: str  # the stem that takes the endings
    kinds: str  # kinds of nouns it may describe


@dataclass(frozen=True)
class Verb:
    en: str  # English base form ("look for")
    en_3sg: str  # English third person singular ("looks for")
    de_1sg: str
    de_3sg: str
    de_pl: str  # wir / sie (plural) form
    subject_kinds: str
    object_kinds: str
    recipient_kinds: str = ""  # non-empty for ditransitive verbs ("give X to Y")
    preps: tuple[str, ...] = ()  # English prepositions this verb accepts as an adverbial

    @property
    def ditransitive(self) -> bool:
        return bool(self.recipient_kinds)


@dataclass(frozen=True)
class Pronoun:
    en: str
    de: str
    person: str  # "1sg", "3sg", "1pl" or "3pl"
    kinds: str  # what it may refer to, checked against the verb's subject kinds


@dataclass(frozen=True)
class Preposition:
    en: str
    de: str
    case: str  # case it governs
    kinds: str  # kinds of nouns it takes


# Only nouns without weak (-n) declension, so singular nouns keep one form in every case.
_NOUN_TABLE = (
    # english sg, english pl, german sg, german pl, gender, kinds
    ("man", "men", "Mann", "Männer", "m", "P"),
    ("woman", "women", "Frau", "Frauen", "f", "P"),
    ("child", "children", "Kind", "Kinder", "n", "P"),
    ("teacher", "teachers", "Lehrer", "Lehrer", "m", "P"),
    ("friend", "friends", "Freund", "Freunde", "m", "P"),
    ("girl", "girls", "Mädchen", "Mädchen", "n", "P"),
    ("dog", "dogs", "Hund", "Hunde", "m", "A"),
    ("cat", "cats", "Katze", "Katzen", "f", "A"),
    ("horse", "horses", "Pferd", "Pferde", "n", "A"),
    ("bird", "birds", "Vogel", "Vögel", "m", "A"),
    ("mouse", "mice", "Maus", "Mäuse", "f", "A"),
    ("book", "books", "Buch", "Bücher", "n", "TX"),
    ("letter", "letters", "Brief", "Briefe", "m", "TX"),
    ("newspaper", "newspapers", "Zeitung", "Zeitungen", "f", "TX"),
    ("bag", "bags", "Tasche", "Taschen", "f", "TC"),
    ("box", "boxes", "Kiste", "Kisten", "f", "TC"),
    ("key", "keys", "Schlüssel", "Schlüssel", "m", "T"),
    ("ball", "balls", "Ball", "Bälle", "m", "T"),
    ("hat", "hats", "Hut", "Hüte", "m", "T"),
    ("flower", "flowers", "Blume", "Blumen", "f", "T"),
    ("apple", "apples", "Apfel", "Äpfel", "m", "F"),
    ("egg", "eggs", "Ei", "Eier", "n", "F"),
    ("orange", "oranges", "Orange", "Orangen", "f", "F"),
    ("car", "cars", "Auto", "Autos", "n", "V"),
    ("bus", "buses", "Bus", "Busse", "m", "V"),
    ("house", "houses", "Haus", "Häuser", "n", "L"),
    ("city", "cities", "Stadt", "Städte", "f", "L"),
)

# Stems that decline regularly (no dunkel/teuer/hoch, whose stems change before an ending).
_ADJECTIVE_TABLE = (
    # english, german stem, kinds of nouns it describes
    ("small", "klein", ALL_KINDS),
    ("big", "groß", ALL_KINDS),
    ("old", "alt", ALL_KINDS),
    ("new", "neu", "TXCVL"),
    ("young", "jung", "PA"),
    ("red", "rot", NON_PERSON),
    ("black", "schwarz", NON_PERSON),
    ("white", "weiß", NON_PERSON),
    ("beautiful", "schön", ALL_KINDS),
    ("ugly", "hässlich", ALL_KINDS),
    ("happy", "glücklich", "PA"),
    ("angry", "wütend", "PA"),
    ("friendly", "freundlich", "PA"),
    ("cheap", "billig", "TXCFV"),
)

_WITH_WITHOUT_AFTER = ("with", "without", "after")
_WITH_WITHOUT_FOR_AFTER = ("with", "without", "for", "after")

_VERB_TABLE = (
    # en, en 3sg, ich, er/sie/es, wir/sie, subject kinds, object kinds, recipient kinds, preps
    ("see", "sees", "sehe", "sieht", "sehen", "PA", ALL_KINDS, "", _WITH_WITHOUT_AFTER),
    ("hear", "hears", "höre", "hört", "hören", "PA", "PA", "", _WITH_WITHOUT_AFTER),
    ("visit", "visits", "besuche", "besucht", "besuchen", "P", "PL", "", _WITH_WITHOUT_AFTER),
    ("love", "loves", "liebe", "liebt", "lieben", "PA", "PAL", "", ()),
    ("look for", "looks for", "suche", "sucht", "suchen", "PA", ALL_KINDS, "",
     _WITH_WITHOUT_FOR_AFTER),
    ("find", "finds", "finde", "findet", "finden", "PA", ALL_KINDS, "", _WITH_WITHOUT_FOR_AFTER),
    ("need", "needs", "brauche", "braucht", "brauchen", "PA", "TFV", "", ("for",)),
    ("buy", "buys", "kaufe", "kauft", "kaufen", "P", "ATFV", "",
     ("with", "without", "for", "from")),
    ("have", "has", "habe", "hat", "haben", "PA", "ATFV", "", ()),
    ("read", "reads", "lese", "liest", "lesen", "P", "X", "", _WITH_WITHOUT_FOR_AFTER),
    ("eat", "eats", "esse", "isst", "essen", "PA", "F", "", _WITH_WITHOUT_AFTER),
    ("drive", "drives", "fahre", "fährt", "fahren", "P", "V", "", _WITH_WITHOUT_FOR_AFTER),
    ("carry", "carries", "trage", "trägt", "tragen", "PA", "TF", "",
     ("with", "without", "for", "out of")),
    ("give", "gives", "gebe", "gibt", "geben", "P", "TF", "PA", ()),
    ("show", "shows", "zeige", "zeigt", "zeigen", "P", "ATFV", "P", ()),
)  # fmt: skip

_PRONOUN_TABLE = (
    # english, german, person, what it may refer to
    ("I", "ich", "1sg", "P"),
    ("he", "er", "3sg", "PA"),
    ("she", "sie", "3sg", "PA"),
    ("it", "es", "3sg", "A"),
    ("we", "wir", "1pl", "P"),
    ("they", "sie", "3pl", "PA"),
)

_PREPOSITION_TABLE = (
    # english, german, case, kinds of nouns it takes
    ("with", "mit", "dat", "PA"),
    ("from", "von", "dat", "P"),
    ("after", "nach", "dat", "PA"),
    ("out of", "aus", "dat", "CL"),
    ("for", "für", "acc", "PA"),
    ("without", "ohne", "acc", "PA"),
)

NUMBERS = {
    2: ("two", "zwei"),
    3: ("three", "drei"),
    4: ("four", "vier"),
    5: ("five", "fünf"),
    6: ("six", "sechs"),
    7: ("seven", "sieben"),
    8: ("eight", "acht"),
    9: ("nine", "neun"),
    10: ("ten", "zehn"),
    11: ("eleven", "elf"),
    12: ("twelve", "zwölf"),
}

NOUNS = tuple(Noun(*row) for row in _NOUN_TABLE)
ADJECTIVES = tuple(Adjective(*row) for row in _ADJECTIVE_TABLE)
VERBS = tuple(Verb(*row) for row in _VERB_TABLE)
PRONOUNS = tuple(Pronoun(*row) for row in _PRONOUN_TABLE)
PREPOSITIONS = tuple(Preposition(*row) for row in _PREPOSITION_TABLE)

# Look-ups by English word, for tests and for readable hand-built examples.
NOUN = {n.en_sg: n for n in NOUNS}
ADJECTIVE = {a.en: a for a in ADJECTIVES}
VERB = {v.en: v for v in VERBS}
PRONOUN = {p.en: p for p in PRONOUNS}
PREPOSITION = {p.en: p for p in PREPOSITIONS}

# --------------------------------------------------------------------------------------------
# German declension tables, keyed by case and then by gender ("pl" for any plural).

DEFINITE_ARTICLE = {
    "nom": {"m": "der", "f": "die", "n": "das", "pl": "die"},
    "acc": {"m": "den", "f": "die", "n": "das", "pl": "die"},
    "dat": {"m": "dem", "f": "der", "n": "dem", "pl": "den"},
}
INDEFINITE_ARTICLE = {  # "kein" is "k" + these
    "nom": {"m": "ein", "f": "eine", "n": "ein"},
    "acc": {"m": "einen", "f": "eine", "n": "ein"},
    "dat": {"m": "einem", "f": "einer", "n": "einem"},
}
# After der/die/das the article shows the case, so the adjective only says -e or -en.
WEAK_ENDINGS = {
    "nom": {"m": "e", "f": "e", "n": "e", "pl": "en"},
    "acc": {"m": "en", "f": "e", "n": "e", "pl": "en"},
    "dat": {"m": "en", "f": "en", "n": "en", "pl": "en"},
}
# After ein/kein the article is bare in three places (nom m, nom/acc n), so the adjective
# carries the strong ending there (ein roter Hund, ein rotes Buch).
MIXED_ENDINGS = {
    "nom": {"m": "er", "f": "e", "n": "es"},
    "acc": {"m": "en", "f": "e", "n": "es"},
    "dat": {"m": "en", "f": "en", "n": "en"},
}
# A number does not decline, so the adjective takes the strong plural ending (zwei rote Hunde).
STRONG_PLURAL_ENDINGS = {"nom": "e", "acc": "e", "dat": "en"}

# Standard contractions of preposition + definite article (only "von" is in the lexicon).
CONTRACTIONS = {("von", "dem"): "vom"}


# --------------------------------------------------------------------------------------------
# Sentence structure


@dataclass(frozen=True)
class NounPhrase:
    noun: Noun
    det: str = "def"  # "def" (the), "indef" (a/an; "kein" under negation) or "num"
    plural: bool = False
    adj: Adjective | None = None
    count: int | None = None  # 2..12, only with det="num"

    def __post_init__(self) -> None:
        if self.det not in ("def", "indef", "num"):
            raise ValueError(f"unknown determiner {self.det!r}")
        if self.det == "indef" and self.plural:
            raise ValueError("no indefinite plurals (bare plurals are not generated)")
        if (self.det == "num") != (self.count is not None):
            raise ValueError("count is required with det='num' and only allowed there")
        if self.det == "num" and (not self.plural or self.count not in NUMBERS):
            raise ValueError("det='num' needs plural=True and a count from 2 to 12")


@dataclass(frozen=True)
class PrepPhrase:
    prep: Preposition
    np: NounPhrase


@dataclass(frozen=True)
class Clause:
    subject: Pronoun | NounPhrase
    verb: Verb
    obj: NounPhrase
    recipient: NounPhrase | None = None  # dative object of a ditransitive verb
    pp: PrepPhrase | None = None
    negated: bool = False

    def __post_init__(self) -> None:
        if self.verb.ditransitive != (self.recipient is not None):
            raise ValueError(
                f"{self.verb.en!r}: a recipient is required iff the verb is ditransitive"
            )
        if self.negated and self.obj.det == "num":
            raise ValueError("negation of a numbered object is not generated")
        if self.negated and self.obj.det == "def" and self.pp is not None:
            # "nicht" before or after the adverbial changes the focus; avoid the question.
            raise ValueError("a 'nicht'-negated clause takes no prepositional phrase")


# --------------------------------------------------------------------------------------------
# Rendering


def english_np(np: NounPhrase) -> str:
    """English noun phrase: 'the red dog', 'an old man', 'two red dogs'."""
    words = [np.noun.en_pl if np.plural else np.noun.en_sg]
    if np.adj is not None:
        words.insert(0, np.adj.en)
    if np.det == "def":
        article = "the"
    elif np.det == "indef":
        # All lexicon words that start with a vowel letter also start with a vowel sound.
        article = "an" if words[0][0] in "aeiou" else "a"
    else:
        article = NUMBERS[np.count][0]
    return " ".join([article, *words])


def german_np(np: NounPhrase, case: str, *, negative: bool = False) -> str:
    """German noun phrase in `case`; `negative` turns ein into kein (indefinite only)."""
    if case not in CASES:
        raise ValueError(f"unknown case {case!r}")
    if negative and np.det != "indef":
        raise ValueError("only an indefinite noun phrase can be negated with 'kein'")
    key = "pl" if np.plural else np.noun.gender
    if np.det == "def":
        article, ending = DEFINITE_ARTICLE[case][key], WEAK_ENDINGS[case][key]
    elif np.det == "indef":
        article, ending = INDEFINITE_ARTICLE[case][key], MIXED_ENDINGS[case][key]
        if negative:
            article = "k" + article
    else:
        article, ending = NUMBERS[np.count][1], STRONG_PLURAL_ENDINGS[case]
    if not np.plural:
        noun = np.noun.de_sg
    elif case == "dat":
        noun = np.noun.de_dat_pl
    else:
        noun = np.noun.de_pl
    words = [article]
    if np.adj is not None:
        words.append(np.adj.de + ending)
    words.append(noun)
    return " ".join(words)


def english_pp(pp: PrepPhrase) -> str:
    return f"{pp.prep.en} {english_np(pp.np)}"


def german_pp(pp: PrepPhrase) -> str:
    """German prepositional phrase in the case the preposition governs, contracted (vom)."""
    article, rest = german_np(pp.np, pp.prep.case).split(" ", 1)
    contracted = CONTRACTIONS.get((pp.prep.de, article))
    if contracted is not None:
        return f"{contracted} {rest}"
    return f"{pp.prep.de} {article} {rest}"


def subject_person(subject: Pronoun | NounPhrase) -> str:
    if isinstance(subject, Pronoun):
        return subject.person
    return "3pl" if subject.plural else "3sg"


def english_verb(verb: Verb, person: str, negated: bool) -> str:
    """'sees' / 'see' / 'does not see' / 'do not see'."""
    third_singular = person == "3sg"
    if negated:
        return ("does not " if third_singular else "do not ") + verb.en
    return verb.en_3sg if third_singular else verb.en


def german_verb(verb: Verb, person: str) -> str:
    if person == "1sg":
        return verb.de_1sg
    if person == "3sg":
        return verb.de_3sg
    return verb.de_pl  # wir and plural sie share the form


def _sentence(words: list[str]) -> str:
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def render_english(clause: Clause) -> str:
    subject = clause.subject
    person = subject_person(subject)
    words = [
        subject.en if isinstance(subject, Pronoun) else english_np(subject),
        english_verb(clause.verb, person, clause.negated),
        english_np(clause.obj),
    ]
    if clause.recipient is not None:
        words += ["to", english_np(clause.recipient)]
    if clause.pp is not None:
        words.append(english_pp(clause.pp))
    return _sentence(words)


def render_german(clause: Clause) -> str:
    subject = clause.subject
    person = subject_person(subject)
    words = [
        subject.de if isinstance(subject, Pronoun) else german_np(subject, "nom"),
        german_verb(clause.verb, person),
    ]
    # Two full noun phrases: the dative recipient comes before the accusative object.
    if clause.recipient is not None:
        words.append(german_np(clause.recipient, "dat"))
    negative_article = clause.negated and clause.obj.det == "indef"
    words.append(german_np(clause.obj, "acc", negative=negative_article))
    if clause.pp is not None:
        words.append(german_pp(clause.pp))
    if clause.negated and not negative_article:
        words.append("nicht")  # sentence negation of a definite object: clause-final
    return _sentence(words)


# --------------------------------------------------------------------------------------------
# Sampling

# (determiner, plural) shapes of a noun phrase and how often each is drawn.
_NP_SHAPES = (("def", False), ("indef", False), ("def", True), ("num", True))
_NP_SHAPE_WEIGHTS = (0.4, 0.25, 0.2, 0.15)


def _fits(kinds: str, allowed: str) -> bool:
    return any(kind in allowed for kind in kinds)


# The candidate lists depend only on the (few) kind strings, so build each one once.
@functools.cache
def _nouns_of(kinds: str) -> tuple[Noun, ...]:
    return tuple(n for n in NOUNS if _fits(n.kinds, kinds))


@functools.cache
def _adjectives_for(noun: Noun) -> tuple[Adjective, ...]:
    return tuple(a for a in ADJECTIVES if _fits(noun.kinds, a.kinds))


@functools.cache
def _pronouns_for(verb: Verb) -> tuple[Pronoun, ...]:
    return tuple(p for p in PRONOUNS if _fits(p.kinds, verb.subject_kinds))


def _sample_np(
    rng: random.Random, kinds: str, exclude: Sequence[Noun] = (), *, allow_num: bool = True
) -> NounPhrase:
    noun = rng.choice([n for n in _nouns_of(kinds) if n not in exclude])
    shapes, weights = _NP_SHAPES, _NP_SHAPE_WEIGHTS
    if not allow_num:
        shapes, weights = shapes[:-1], weights[:-1]
    det, plural = rng.choices(shapes, weights)[0]
    count = rng.randint(2, 12) if det == "num" else None
    adj = None
    if rng.random() < ADJECTIVE_P:
        adj = rng.choice(_adjectives_for(noun))
    return NounPhrase(noun, det, plural, adj, count)


def _sample_subject(rng: random.Random, verb: Verb) -> Pronoun | NounPhrase:
    if rng.random() < PRONOUN_SUBJECT_P:
        return rng.choice(_pronouns_for(verb))
    return _sample_np(rng, verb.subject_kinds)


def sample_clause(rng: random.Random) -> Clause:
    """Draw one sentence structure; all randomness comes from `rng`."""
    verb = rng.choice(VERBS)
    subject = _sample_subject(rng, verb)
    # Different nouns in one clause read better than "the dog sees the dog".
    used = [subject.noun] if isinstance(subject, NounPhrase) else []
    negated = rng.random() < NEGATION_P
    obj = _sample_np(rng, verb.object_kinds, used, allow_num=not negated)
    used.append(obj.noun)
    recipient = None
    if verb.ditransitive:
        recipient = _sample_np(rng, verb.recipient_kinds, used)
        used.append(recipient.noun)
    pp = None
    nicht_negated = negated and obj.det == "def"
    if verb.preps and not nicht_negated and rng.random() < PP_P:
        prep = PREPOSITION[rng.choice(verb.preps)]
        pp = PrepPhrase(prep, _sample_np(rng, prep.kinds, used))
    return Clause(subject, verb, obj, recipient, pp, negated)


def generate_pair(rng: random.Random) -> tuple[str, str]:
    """One (english, german) sentence pair drawn with `rng`."""
    clause = sample_clause(rng)
    return render_english(clause), render_german(clause)


def generate_corpus(n: int, seed: int) -> list[tuple[str, str]]:
    """`n` pairs with pairwise distinct English sides, deterministic for `seed`."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    seen: set[str] = set()
    pairs: list[tuple[str, str]] = []
    # The grammar has many millions of sentences, so duplicates are rare; the cap only
    # guards against an endless loop if the lexicon is ever shrunk drastically.
    for _ in range(20 * n + 1000):
        if len(pairs) == n:
            return pairs
        en, de = generate_pair(rng)
        if en not in seen:
            seen.add(en)
            pairs.append((en, de))
    if len(pairs) == n:
        return pairs
    raise RuntimeError(f"could only generate {len(pairs)} distinct pairs out of {n}")


# --------------------------------------------------------------------------------------------
# Files and command line


def write_splits(
    out_dir: str | os.PathLike,
    seed: int = 1234,
    n_train: int = 40000,
    n_valid: int = 500,
    n_test: int = 1000,
) -> dict[str, int]:
    """Write out_dir/{train,valid,test}.{en,de}; the splits share no English sentence.

    All pairs come from one seeded corpus of distinct sentences, so the splits are disjoint by
    construction. Each file is written to a temporary file first and moved into place with
    os.replace, so readers never see a half-written file.
    """
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    for name, size in sizes.items():
        if size < 0:
            raise ValueError(f"{name} size must be >= 0, got {size}")
    pairs = generate_corpus(n_train + n_valid + n_test, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    contents: dict[str, str] = {}
    start = 0
    for name, size in sizes.items():
        split = pairs[start : start + size]
        start += size
        contents[f"{name}.en"] = "".join(en + "\n" for en, _ in split)
        contents[f"{name}.de"] = "".join(de + "\n" for _, de in split)

    temps: dict[str, str] = {}
    try:
        for filename, text in contents.items():
            fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{filename}.", suffix=".tmp")
            temps[filename] = tmp
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; these are ordinary data files
        for filename, tmp in temps.items():
            os.replace(tmp, out / filename)
    except BaseException:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(description="Write the synthetic English->German quick-start corpus.")
    parser.add_argument("--out", required=True, help="output directory, e.g. data/quickstart")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--train", type=int, default=40000, help="training pairs")
    parser.add_argument("--valid", type=int, default=500, help="validation pairs")
    parser.add_argument("--test", type=int, default=1000, help="test pairs")
    args = parser.parse_args(argv)
    for name in ("train", "valid", "test"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0 (got {getattr(args, name)})")
    try:
        counts = write_splits(args.out, args.seed, args.train, args.valid, args.test)
    except OSError as e:
        raise UserError(f"cannot write {args.out} ({e.strerror})") from None
    print(f"wrote {counts['train']}/{counts['valid']}/{counts['test']} pairs to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
