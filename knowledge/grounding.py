"""The grounding check: is a generated (rewritten) sentence faithful to the source sentence it cites?

A word-overlap score alone accepts contradictions: "Atelectasis is a condition characterized by increased lung
volume and opacity with signs of volume loss" shares most of its words with a source that says *loss* of
volume. The checks, in order; the first that fails is the verdict's reason:

1. **entity**: a sentence that names another vocabulary entity and not its own (or a parent or child of it)
   is about that entity ("Cardiomegaly displaces the left heart border" offered for pleural effusion); an
   entity the source does not name may not be introduced either;
2. **assertion**: an entity both name is asserted the same way (present / absent / uncertain, by the report
   labeler's ConText rules);
3. **negation**: a negation cue ("no", "not", "without", "absent", ...) in one and not the other;
4. **numbers**: every number of the sentence occurs in the source ("3 cm" is not "5 cm");
5. **qualifiers**: laterality (left/right, bilateral/unilateral), level (upper/lower, apical/basal),
   anterior/posterior, medial/lateral, central/peripheral and antonyms (well-/ill-defined, large/small,
   acute/chronic, ...): a value the source contradicts or does not state;
6. **direction**: increased/decreased, enlarged/reduced, elevated/depressed, ... bound to what they modify
   ("increased lung volume" against "loss of volume"), and hyper-/hypo- prefixes ("hyperlucent"/"hypolucent");
7. **lexical support**: the share of the sentence's content words (5-letter stems) found in the source
   (words of the entity's own names are free) is at least ``min_lexical``;
8. **semantic support**: the cosine similarity of the two sentences under all-MiniLM-L6-v2
   (:mod:`knowledge.embeddings`) is at least ``min_semantic`` (skipped when ``min_semantic`` is None).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from knowledge.labeler import PRESENT, UNCERTAIN, ReportLabeler
from knowledge.vocabulary import Vocabulary

_STOPWORDS = frozenset({
    "a", "an", "the", "of", "in", "on", "at", "to", "for", "from", "by", "with", "and", "or", "as", "is",
    "are", "was", "were", "be", "been", "being", "it", "its", "this", "that", "these", "those", "which",
    "who", "whom", "there", "their", "they", "them", "than", "then", "into", "onto", "over", "under", "may",
    "can", "could", "might", "should", "would", "will", "often", "usually", "typically", "most", "more",
    "less", "very", "also", "such", "one", "two", "both", "each", "any", "all", "some", "other", "seen",
    "see", "shows", "show", "showing", "appears", "appear", "appearance", "finding", "findings", "radiograph",
    "radiographs", "chest", "film", "films", "image", "images",
})
NEGATION_CUES = frozenset({"no", "not", "without", "never", "none", "absent", "absence", "lack", "lacks",
                           "lacking", "cannot", "nor", "neither", "free", "excluded"})
NUMBER_WORDS = {"one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
                "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "half": "0.5",
                "third": "1/3", "quarter": "1/4", "twice": "2x", "double": "2x"}
QUALIFIERS: dict[str, dict[str, frozenset[str]]] = {
    "side": {"left": frozenset({"left"}), "right": frozenset({"right"})},
    "extent": {"bilateral": frozenset({"bilateral", "both"}), "unilateral": frozenset({"unilateral"})},
    "level": {"upper": frozenset({"upper", "superior", "apical", "apex", "apices", "above", "cranial"}),
              "lower": frozenset({"lower", "inferior", "basal", "base", "bases", "basilar", "bibasilar", "below",
                                  "caudal", "dependent"})},
    "depth": {"anterior": frozenset({"anterior", "anteriorly"}), "posterior": frozenset({"posterior",
                                                                                         "posteriorly"})},
    "axis": {"medial": frozenset({"medial", "medially"}), "lateral": frozenset({"lateral", "laterally"})},
    "zone": {"central": frozenset({"central", "centrally", "perihilar"}),
             "peripheral": frozenset({"peripheral", "peripherally", "periphery", "subpleural"})},
    "margin": {"well-defined": frozenset({"well-defined", "sharp", "sharply", "crisp"}),
               "ill-defined": frozenset({"ill-defined", "indistinct", "blurred", "hazy", "fuzzy"})},
    "size": {"large": frozenset({"large", "big", "massive"}), "small": frozenset({"small", "tiny", "minute"})},
    "course": {"acute": frozenset({"acute"}), "chronic": frozenset({"chronic"})},
    "density": {"dense": frozenset({"dense", "opaque", "radiopaque", "whiter"}),
                "lucent": frozenset({"lucent", "radiolucent", "darker", "hyperlucent", "lucency"})},
    "contour": {"concave": frozenset({"concave"}), "convex": frozenset({"convex"})},
    "frequency": {"common": frozenset({"common", "commonly", "frequent", "frequently"}),
                  "rare": frozenset({"rare", "rarely", "uncommon", "infrequent"})},
}
"""Mutually exclusive values; a sentence may use a value only when its source states it."""
_UNSTATED_OK = frozenset({"size", "frequency", "margin", "course", "contour", "density"})
"""Classes where only a contradiction (the source states the other value) is rejected, not an added value."""
INCREASE = frozenset({
    "increased", "increase", "increases", "increasing", "enlarged", "enlargement", "enlarging", "elevated",
    "elevation", "raised", "larger", "greater", "more", "higher", "widened", "widening", "overinflated",
    "overinflation", "overexpansion", "gain", "thickened", "dilated", "dilatation", "dilation", "distended",
    "distension", "hyperinflated", "hyperinflation", "hyperexpanded", "expanded", "displaced"})
DECREASE = frozenset({
    "decreased", "decrease", "decreases", "decreasing", "reduced", "reduction", "reduces", "diminished",
    "smaller", "less", "fewer", "loss", "lost", "collapse", "collapsed", "narrowed", "narrowing", "depressed",
    "shrunken", "underinflated", "hypoinflated", "thinned", "thinning", "deflated", "retracted"})
_SCOPE_STOPS = frozenset({"with", "and", "or", "but", "which", "that", "while", "whereas", "by", "to", "from",
                          "due", "because", "when", "is", "are", "was", "were", ",", ";"})
_COPULAS = frozenset({"is", "are", "was", "were", "be", "been", "appears", "appear", "becomes", "become",
                      "seems", "looks", "mildly", "markedly", "slightly"})
_QUALIFIER_WORDS = frozenset(w for values in QUALIFIERS.values() for words in values.values() for w in words)
_NOT_ATTRIBUTES = _STOPWORDS | _QUALIFIER_WORDS | INCREASE | DECREASE
"""Words a direction is never *about* ("elevated left hemidiaphragm" is about the hemidiaphragm)."""
_WORD = re.compile(r"\d+(?:\.\d+)?|[a-z]+(?:-[a-z]+)*|[,;]")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _stem(word: str) -> str:
    """A crude stem (first 5 letters): "effusions" ~ "effusion", "opacities" ~ "opacity"."""
    return word[:5] if len(word) > 5 else word


def content_words(text: str) -> set[str]:
    return {_stem(w) for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2 and w not in _STOPWORDS}


def support_score(generated: str, source: str, allowed: Iterable[str] = ()) -> float:
    """Share of the generated sentence's content words found in its source (words of ``allowed``, the
    finding's own names, are free). A sentence with no content words of its own scores 0."""
    free = set().union(*(content_words(a) for a in allowed)) if allowed else set()
    words = content_words(generated) - free
    if not words:
        return 0.0
    return len(words & (content_words(source) | free)) / len(words)


# ---------------------------------------------------------------------------------------------- rule checks


def numbers(words: Sequence[str]) -> set[str]:
    """Numbers written as digits or words, normalised ("three" -> "3", "3.0" -> "3")."""
    out = set()
    for word in words:
        if word[0].isdigit():
            out.add(word.rstrip("0").rstrip(".") if "." in word else word)
        elif word in NUMBER_WORDS:
            out.add(NUMBER_WORDS[word])
    return out


def qualifier_problem(generated: Sequence[str], source: Sequence[str]) -> str | None:
    """A qualifier value of ``generated`` that ``source`` contradicts (or, for positional classes, omits)."""
    gen, src = set(generated), set(source)
    for name, values in QUALIFIERS.items():
        stated = {value for value, words in values.items() if words & src}
        for value, words in values.items():
            if not words & gen or value in stated:
                continue
            if stated:
                return f"{name}: '{value}' where the source says '{'/'.join(sorted(stated))}'"
            if name not in _UNSTATED_OK:
                return f"{name}: '{value}' is not in the source"
    return None


def directions(words: Sequence[str]) -> set[tuple[str, int]]:
    """(stem of the modified word, +1 / -1) for every direction word: "increased lung volume" -> (volum, +1)
    and (lung, +1); "loss of volume" and "volume loss" -> (volum, -1)."""
    out: set[tuple[str, int]] = set()
    for i, word in enumerate(words):
        sign = 1 if word in INCREASE else -1 if word in DECREASE else 0
        if not sign:
            continue
        taken = 0
        for after in words[i + 1:]:  # forward, up to two content words, to the end of the phrase
            if after in _SCOPE_STOPS or taken == 2:
                break
            if after not in _NOT_ATTRIBUTES:
                out.add((_stem(after), sign))
                taken += 1
        k = i - 1  # backward: the word it follows ("volume loss", "volume is decreased")
        while k >= 0 and words[k] in _COPULAS:
            k -= 1
        if k >= 0 and words[k] not in _NOT_ATTRIBUTES and words[k] not in _SCOPE_STOPS:
            out.add((_stem(words[k]), sign))
    return out


def direction_problem(generated: Sequence[str], source: Sequence[str]) -> str | None:
    """A direction of ``generated`` whose attribute has the opposite direction (only) in ``source``."""
    gen, src = directions(generated), directions(source)
    for attribute, sign in sorted(gen):
        if (attribute, -sign) in src and (attribute, sign) not in src:
            said = "increase" if sign > 0 else "decrease"
            return f"direction: {said} of '{attribute}…' where the source says the opposite"
    src_words = set(source)
    for word in generated:
        for this, other in (("hyper", "hypo"), ("hypo", "hyper")):
            if word.startswith(this) and len(word) > len(this) + 2:
                flipped = other + word[len(this):]
                if flipped in src_words and word not in src_words:
                    return f"direction: '{word}' where the source says '{flipped}'"
    return None


def _stated(words: Sequence[str]) -> tuple:
    """What a sentence states beyond its topic: negation, numbers, qualifier values, directions."""
    present = set(words)
    qualifiers = tuple(frozenset(v for v, ws in values.items() if ws & present) for values in QUALIFIERS.values())
    return (bool(NEGATION_CUES & present), frozenset(numbers(words)), qualifiers,
            frozenset(sign for _, sign in directions(words)))


def same_facts(first: str, second: str) -> bool:
    """Whether two sentences state the same negation, numbers, qualifiers (side, level, size...) and
    directions: "Small left pleural effusion." and "Moderate right pleural effusion." are similar sentences
    but not duplicates."""
    return _stated(_words(first)) == _stated(_words(second))


# ---------------------------------------------------------------------------------------------- checker


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str | None
    lexical: float
    semantic: float | None = None


class GroundingChecker:
    """``GroundingChecker(vocab).check_all([(generated, source, entity), ...]) -> [Verdict, ...]``."""

    def __init__(self, vocab: Vocabulary, min_lexical: float = 0.6, min_semantic: float | None = 0.5,
                 labeler: ReportLabeler | None = None) -> None:
        self.vocab = vocab
        self.min_lexical, self.min_semantic = min_lexical, min_semantic
        self.labeler = labeler or ReportLabeler(vocab)
        children: dict[str, set[str]] = {}
        for entity in vocab:
            for parent in entity.parents:
                children.setdefault(parent, set()).add(entity.id)
        self._family = {e.id: {e.id, *e.parents, *children.get(e.id, ())} for e in vocab}

    def _assertions(self, text: str) -> dict[str, int]:
        rank = {PRESENT: 2, UNCERTAIN: 1}
        out: dict[str, int] = {}
        for mention in self.labeler.mentions(text, whole_text=True):
            if mention.entity == "no_finding":
                continue
            current = out.get(mention.entity)
            if current is None or rank.get(mention.status, 0) > rank.get(current, 0):
                out[mention.entity] = mention.status
        return out

    def rule_problem(self, generated: str, source: str, entity: str) -> str | None:
        """The first rule (1-6 of the module docstring) that ``generated`` breaks, or None."""
        family = self._family.get(entity, {entity})
        gen_entities, src_entities = self._assertions(generated), self._assertions(source)
        others = sorted(set(gen_entities) - family)
        if others and not family & set(gen_entities):
            return f"entity: about {others[0]}, not {entity}"
        introduced = [e for e in others if e not in src_entities]
        if introduced:
            return f"entity: names {introduced[0]}, which the source does not"
        for name in sorted(set(gen_entities) & set(src_entities)):
            if gen_entities[name] != src_entities[name]:
                return f"assertion: {name} {gen_entities[name]} where the source says {src_entities[name]}"
        gen_words, src_words = _words(generated), _words(source)
        gen_neg, src_neg = NEGATION_CUES & set(gen_words), NEGATION_CUES & set(src_words)
        if bool(gen_neg) != bool(src_neg):
            return f"negation: '{next(iter(sorted(gen_neg or src_neg)))}' in only one of the two"
        missing = sorted(numbers(gen_words) - numbers(src_words))
        if missing:
            return f"number: {missing[0]} is not in the source"
        return qualifier_problem(gen_words, src_words) or direction_problem(gen_words, src_words)

    def check_all(self, items: Sequence[tuple[str, str, str]]) -> list[Verdict]:
        """Verdicts for ``(generated, source, entity)`` triples (one encoder call for all of them)."""
        problems, lexical = [], []
        for generated, source, entity in items:
            ent = self.vocab.get(entity)
            problems.append(self.rule_problem(generated, source, entity))
            lexical.append(round(support_score(generated, source, [ent.name, *ent.synonyms]), 3))
        semantic: list[float | None] = [None] * len(items)
        if self.min_semantic is not None:
            from knowledge.embeddings import pair_similarity  # torch: only when a semantic check is wanted

            todo = [i for i, p in enumerate(problems) if p is None]
            scores = pair_similarity([items[i][0] for i in todo], [items[i][1] for i in todo]) if todo else []
            for i, score in zip(todo, scores):
                semantic[i] = round(score, 3)
        verdicts = []
        for problem, lex, sem in zip(problems, lexical, semantic):
            if problem is None and lex < self.min_lexical:
                problem = f"lexical support {lex:.2f} < {self.min_lexical}"
            if problem is None and sem is not None and self.min_semantic is not None and sem < self.min_semantic:
                problem = f"semantic support {sem:.2f} < {self.min_semantic}"
            verdicts.append(Verdict(problem is None, problem, lex, sem))
        return verdicts

    def check(self, generated: str, source: str, entity: str) -> Verdict:
        return self.check_all([(generated, source, entity)])[0]
