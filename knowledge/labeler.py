"""A rule-based radiology report labeler: sections, sentences, ConText-style assertion scopes, per-study labels.

Design after pyConText / NegEx and the CheXpert labeler (mention -> context -> aggregation), our own rules:

1. **Sections** (:func:`parse_sections`): FINDINGS and IMPRESSION are labelled (indication, history and the
   like are not); a report without them is labelled from its last paragraph.
2. **Sentences** (:func:`split_sentences`): ``.``/``!``/``?`` ends a sentence except after an abbreviation or
   inside a decimal; a numbered item (``1.``, ``2)``, ``1.Lucency``) starts a new sentence even when the
   previous item has no full stop. Sentences about another body part ("fracture of the left hip" on a chest
   report) are not labelled.
3. **Mentions**: vocabulary names and synonyms, longest match first, with plural and classical morphology
   (``granulomata``, ``atelectases``, ``opacities``); slashes separate words (``granulomas/lymph``). A few
   findings are phrased too freely for a phrase list and are found by *co-occurrence* of a head and a
   modifier within a short clause window (:data:`COOCCURRENCE`: "the heart is slightly large", "borderline
   heart size", "prominence of the central pulmonary vasculature", "dextrocurvature of the thoracic spine").
4. **Context** (ConText): triggers of four kinds open a scope forward (``pre``), backward (``post``) or both,
   to the end of the sentence, stopped by a *terminator* ("but", "however", "which", "there is", ``;``) and,
   for backward scopes, by a comma; pseudo-triggers ("no change", "no interval change") are consumed first.

   * negation ("no", "clear of", "without", "within normal limits", "has resolved", "unlikely") -> absent (0);
   * uncertainty ("may", "possible", "cannot be excluded", "difficult to exclude", "in the differential",
     "may be secondary to", "?") -> uncertain (-1);
   * hypothetical and historical ("evaluation for", "to rule out", "recommend", "if", "history of") -> the
     mention is not an assertion about this study and is dropped (not mentioned);
   * probable ("likely", "probably", "consistent with", "compatible with") -> consumed, the mention stays
     present: radiologists write "probable small effusion" for an effusion they report, and the MeSH indexers
     of the Indiana collection tag it.

   An uncertainty trigger inside a negation scope is negated ("no findings to suggest pneumonia").
5. **Alternatives.** "atelectasis versus scarring", "atelectasis or infiltrate", "atelectasis/scar" name the
   candidate readings of an abnormality that *is* seen. By default (``alternatives="present"``) each named
   alternative is present, the way the Indiana indexers tag both; ``alternatives="uncertain"`` marks them -1
   (the CheXpert labeler's reading). "or" inside a negated list ("no effusion or pneumothorax") is negated
   either way.

Vocabulary conventions (deliberate, see docs/knowledge.md): "airspace disease" and "nodular opacity" are lung
opacities (not consolidation, not a nodule); an enlarged heart or cardiac silhouette, borderline included, is
cardiomegaly; surgical clips and stents are not support devices (sternotomy wires, lines, tubes, catheters,
pacemakers, ports, valves and stimulators are); volume loss alone is not atelectasis.

Labels per study: 1 present, 0 absent, -1 uncertain; entities never mentioned are absent from the dict. Across
mentions, present beats uncertain beats absent. A child's status also counts for its parents (nodule ->
lung_lesion, chest tube -> support_devices). ``no_finding`` is 1 when stated ("no acute cardiopulmonary
process") or when every mentioned finding is absent, and 0 as soon as any non-device finding is present or
uncertain.

Optional: :func:`labels_from_radgraph` converts a RadGraph annotation (OBS-DP/OBS-DA/OBS-U) to the same labels.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from knowledge.vocabulary import Vocabulary, load_vocabulary

PRESENT, ABSENT, UNCERTAIN = 1, 0, -1
MAX_SCOPE = 40
"""Tokens a trigger reaches at most: in practice the sentence or a terminator ends a scope first; the cap only
guards run-on text without punctuation."""
LABEL_SECTIONS = ("findings", "impression")
ALTERNATIVES = ("present", "uncertain")

# ------------------------------------------------------------------------------------------ trigger lists
# Each trigger is a lower-case token sequence. Direction: "pre" scopes forward, "post" backward, "both" both.
NEGATION_PRE = (
    "no", "not", "without", "negative for", "free of", "absence of", "absent", "no evidence of",
    "no signs of", "no sign of", "no radiographic evidence of", "no findings of", "rather than", "neither", "nor",
    "resolution of", "interval resolution of", "resolved", "clear of", "no definite", "no convincing",
    "removal of", "never", "interval clearing of", "clearing of", "unlikely", "no visible", "no visualized",
    "no suspicious", "no typical findings of",
)
NEGATION_POST = (
    "not seen", "not identified", "not present", "not visualized", "not appreciated", "not evident",
    "not demonstrated", "not visible", "not detected", "has resolved", "have resolved", "resolved",
    "is absent", "are absent", "no longer seen", "no longer present", "no longer visualized", "no longer",
    "has been removed", "have been removed", "removed", "ruled out", "excluded", "within normal limits",
    "within limits of normal", "within normal limits in size", "are within normal limits", "unremarkable",
    "has cleared", "have cleared", "cleared", "not well seen", "not well-seen", "not well visualized",
    "unlikely", "is normal", "are normal", "appear normal", "appears normal",
)
UNCERTAIN_PRE = (
    "may", "might", "could", "possible", "possibly", "suspicious for", "suspected", "suspect", "concern for",
    "concerning for", "question of", "questionable", "questioned", "cannot exclude", "can not exclude",
    "cannot rule out", "can not rule out", "differential diagnosis", "differential diagnosis includes",
    "differential includes", "in the differential", "suggestive of", "suggest", "suggests", "suggesting",
    "worrisome for", "equivocal", "indeterminate", "may represent", "could represent", "may be secondary to",
    "raising the possibility of", "not excluded", "difficult to exclude", "difficult to entirely exclude",
    "difficult to completely exclude", "maybe", "perhaps", "in the appropriate clinical setting",
    "in the proper clinical setting", "?",
)
UNCERTAIN_POST = (
    "cannot be excluded", "can not be excluded", "could not be excluded", "not excluded", "not be excluded",
    "cannot be ruled out", "can not be ruled out", "not ruled out", "not be ruled out", "not entirely excluded",
    "is possible", "is suspected", "is questioned", "are possible", "possible", "suspected", "questionable",
    "difficult to exclude", "difficult to entirely exclude", "difficult to completely exclude",
    "in the differential", "not entirely excluded", "less likely", "would be a consideration",
    "is a consideration", "?",
)
HYPOTHETICAL_PRE = (
    "evaluation of", "evaluation for", "evaluate for", "to evaluate", "assess for", "to assess", "rule out",
    "to rule out", "rule-out", "r/o", "to identify", "if", "recommend", "recommended", "correlate for",
    "screening for", "in case of", "exclude", "to exclude", "consider", "correlate clinically for",
    "clinical correlation for", "history of",
)
HYPOTHETICAL_POST = ("may not be demonstrated", "may not be visible", "may not be seen", "is recommended")
PROBABLE = (
    "likely", "most likely", "more likely", "probably", "probable", "consistent with", "compatible with",
    "most compatible with", "most consistent with", "favored", "favor", "presumably", "presumed",
    "represents", "representing", "reflects", "reflecting", "in keeping with",
)
PSEUDO_TRIGGERS = (
    "no change", "no interval change", "no significant change", "no significant interval change",
    "no substantial change", "no appreciable change", "no increase", "no decrease", "not changed",
    "not significantly changed", "without change", "without interval change", "not only", "no further change",
    "without significant change", "no definite change", "not well", "gram negative",
)
TERMINATORS = (
    "but", "however", "although", "though", "nevertheless", "yet", "still", "aside from", "apart from",
    "except", "except for", "other than", "which", "who", "there is", "there are", "there has been",
    "there have been", "secondary to", "due to", "as well as", ";", ":", "while", "whereas", "otherwise",
)
_ALTERNATIVE_WORDS = ("or", "versus", "vs", "/", "and/or")

# Co-occurrence rules: entity -> (head words, modifier words, max words between them). A head and a modifier
# in either order, not separated by a terminator, a comma or a full clause, make one mention spanning both.
COOCCURRENCE: dict[str, tuple[frozenset[str], frozenset[str], int]] = {
    "cardiomegaly": (frozenset({"heart"}),
                     frozenset({"enlarged", "enlargement", "large", "borderline", "prominent"}), 5),
    "vascular_congestion": (frozenset({"vascular", "vascularity", "vasculature", "vessels"}),
                            frozenset({"prominence", "prominent", "engorged", "engorgement", "congestion",
                                       "congestive", "congested", "increased", "enlarged", "indistinct",
                                       "cephalization", "redistribution", "fullness", "plethora"}), 4),
    "scoliosis": (frozenset({"spine", "spinal", "thoracic", "thoracolumbar", "lumbar", "vertebral"}),
                  frozenset({"curvature", "curve", "curvatures"}), 4),
    "central_venous_catheter": (frozenset({"tip"}),
                                frozenset({"svc", "cavoatrial", "atriocaval", "caval", "vena"}), 6),
    "pacemaker": (frozenset({"lead", "leads"}), frozenset({"atrium", "ventricle", "ventricular", "atrial"}), 5),
    "support_devices": (frozenset({"valve"}), frozenset({"prosthetic", "prosthesis", "replacement", "mechanical"}),
                        3),
}
_CLAUSE_BREAKS = frozenset({",", ";", ":", "but", "however", "which", "while", "whereas", "and", "with"})

NON_CHEST_PARTS = frozenset({
    "hip", "hips", "femur", "femoral", "pelvis", "pelvic", "knee", "knees", "ankle", "wrist",
    "foot", "feet", "elbow", "tibia", "tibial", "fibula", "skull", "forearm", "ulna", "finger", "fingers",
    "toe", "toes", "leg", "legs", "abdomen", "abdominal",
})
"""A sentence naming one of these is about another body part (or the abdomen): not labelled."""
NOT_ENTITIES = ("pericardial effusion", "joint effusion", "kyphotic curvature", "kyphosis")
"""Phrases that contain a vocabulary term but name something else: a pericardial effusion is not a pleural
effusion, a kyphotic curvature is not scoliosis."""
NO_FINDING = "no_finding"
ENTITY_EXCLUSIONS = {"fracture": frozenset({"screw", "screws", "wire", "wires", "lead", "leads", "hardware",
                                            "plate", "sternotomy", "fixation", "prosthesis", "catheter"})}
"""A mention is dropped when its sentence has one of these words: a fractured screw is not a bone fracture."""

_ORDINAL_ABBREVIATIONS = {"dr", "mr", "mrs", "ms", "vs", "approx", "e.g", "i.e", "fig", "st"}
FILLER_WORDS = frozenset({"mildly", "moderately", "severely", "markedly", "slightly", "minimally", "somewhat",
                          "xxxx"})
"""Degree adverbs (and "xxxx", the mark de-identification leaves) skipped while matching, so "heart size
is mildly enlarged" matches "heart size is enlarged"."""
_SECTION_HEADER = re.compile(r"(?:^|\n)[ \t]?([A-Z][A-Z ()/,&-]*[A-Z)])[ \t]*:", re.MULTILINE)
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*|[;:?,/]")
"""Words split at hyphens ("fracture-dislocation", "mass-like"), as vocabulary phrases are."""
_LIST_MARKER = re.compile(r"^\s*(?:\d{1,2}|[a-z])[.)]\s+")
_NUMBERED_ITEM = re.compile(r"(?:(?<=\s)|^)\d{1,2}[.)](?=\s*[A-Za-z])(?!\s*[ap]\.m\.)")
"""``2. Abnormal ...`` or ``1.Lucency``: a numbered item begins (not a decimal, not "10 a.m.")."""


# ------------------------------------------------------------------------------------------ sections


def normalize_section_name(name: str) -> str:
    """Map a report header to a canonical section name (``FINDINGS/IMPRESSION`` -> impression, ...)."""
    lowered = " ".join(name.lower().split())
    for canonical in ("impression", "conclusion", "findings", "history", "indication", "comparison",
                      "technique", "addendum", "recommendation", "examination", "notification"):
        if canonical in lowered:
            return "impression" if canonical == "conclusion" else canonical
    if re.search(r"chest|portable|pa and lat|single view|frontal|ap view", lowered):
        return "findings"
    return lowered.replace(" ", "_")


def _clean(text: str) -> str:
    return " ".join(text.replace("___", " ").split()) if "___" in text else " ".join(text.split())


def parse_sections(text: str) -> dict[str, str]:
    """Split a MIMIC-style report into sections keyed by canonical name.

    Headers are ALL-CAPS names followed by ``:`` at a line start (MIMIC lines start with one space). Text before
    the first header is ``preamble`` (the ``FINAL REPORT`` banner is dropped); empty sections are dropped;
    repeated sections are joined. When neither findings nor impression exists the last paragraph is returned as
    ``last_paragraph``. Whitespace is collapsed; missing sections are absent keys.
    """
    sections: dict[str, str] = {}
    matches = list(_SECTION_HEADER.finditer(text))
    preamble = text[: matches[0].start()] if matches else text
    preamble = _clean(preamble.replace("FINAL REPORT", ""))
    if preamble and matches:
        sections["preamble"] = preamble
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = _clean(text[match.end():end])
        if not body:
            continue
        name = normalize_section_name(match.group(1))
        sections[name] = f"{sections[name]} {body}" if name in sections else body
    if "findings" not in sections and "impression" not in sections:
        paragraphs = [p for p in re.split(r"\n[ \t]*\n", text.replace("FINAL REPORT", "")) if p.strip()]
        if paragraphs:
            last = paragraphs[-1]
            header = _SECTION_HEADER.match(last if last.startswith("\n") else "\n" + last)
            sections["last_paragraph"] = _clean(last[header.end() - 1:] if header else last)
            if not sections["last_paragraph"]:
                del sections["last_paragraph"]
    return sections


def label_text(text: str, sections: Iterable[str] = LABEL_SECTIONS) -> str:
    """The part of a report that is labelled: the wanted sections, else the last paragraph, else everything."""
    parsed = parse_sections(text)
    chosen = [parsed[name] for name in sections if name in parsed]
    if chosen:
        return " ".join(chosen)
    return parsed.get("last_paragraph", _clean(text))


# ------------------------------------------------------------------------------------------ sentences


def _split_on_full_stops(text: str) -> list[str]:
    sentences: list[str] = []
    start = 0
    for match in re.finditer(r"[.!?]+(?=\s|$)", text):
        before = text[start:match.start()].split()
        last = before[-1].lower().rstrip(".") if before else ""
        if not before or last in _ORDINAL_ABBREVIATIONS or re.fullmatch(r"\d{1,2}|[a-z]", last):
            continue  # "1." list marker, "Dr.", "vs." ...: not the end of a sentence
        sentences.append(text[start:match.end()])
        start = match.end()
    sentences.append(text[start:])
    return sentences


def split_sentences(text: str) -> list[str]:
    """Rule-based sentence splitting: ``.``/``!``/``?`` followed by space, not after an abbreviation, a list
    marker or a decimal; a numbered item starts a new sentence even without a full stop before it. List
    markers are stripped from the start of sentences."""
    text = _clean(text)
    out = []
    items = _split_items(text)
    for item in items:
        for sentence in _split_on_full_stops(item):
            sentence = sentence.strip()
            while _LIST_MARKER.match(sentence):
                sentence = _LIST_MARKER.sub("", sentence, count=1)
            sentence = re.sub(r"^\d{1,2}[.)](?=[A-Za-z])", "", sentence)
            if re.search(r"[A-Za-z]", sentence):
                out.append(sentence)
    return out


def _split_items(text: str) -> list[str]:
    """Cut ``text`` before every numbered item marker."""
    cuts = [m.start() for m in _NUMBERED_ITEM.finditer(text)]
    bounds = [0, *[c for c in cuts if c > 0], len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if text[a:b].strip()]


# ------------------------------------------------------------------------------------------ matching


@dataclass(frozen=True)
class Token:
    text: str
    start: int
    end: int


def tokenize(sentence: str, drop: frozenset[str] = frozenset()) -> list[Token]:
    """Lower-case word tokens (and ``; : ? , /``) with character offsets, minus the words in ``drop``."""
    lowered = sentence.lower()
    return [Token(m.group(0), m.start(), m.end()) for m in _TOKEN.finditer(lowered) if m.group(0) not in drop]


def _phrase_tokens(phrase: str) -> tuple[str, ...]:
    return tuple(t.text for t in tokenize(phrase))


def inflections(word: str) -> set[str]:
    """The word and its plural forms, English and classical: ``opacity -> opacities``, ``granuloma ->
    granulomata``, ``atelectasis -> atelectases``, ``bulla -> bullae``."""
    forms = {word, word + "s", word + "es"}
    if word.endswith("y"):
        forms.add(word[:-1] + "ies")
    if word.endswith("a"):
        forms |= {word + "ta", word + "e"}
    if word.endswith("is"):
        forms.add(word[:-2] + "es")
    if word.endswith("um"):
        forms.add(word[:-2] + "a")
    return forms


class PhraseMatcher:
    """Longest-match, left-to-right, non-overlapping matching of token sequences; with ``plurals`` the last
    token of a phrase also matches its inflections (:func:`inflections`)."""

    def __init__(self, phrases: dict[str, Any], plurals: bool = False) -> None:
        self._by_first: dict[str, list[tuple[tuple[str, ...], frozenset[str], Any]]] = {}
        self.plurals = plurals
        for phrase, value in phrases.items():
            tokens = _phrase_tokens(phrase)
            if not tokens:
                continue
            last = frozenset(inflections(tokens[-1]) if plurals else {tokens[-1]})
            firsts = last if len(tokens) == 1 else {tokens[0]}
            for first in firsts:
                self._by_first.setdefault(first, []).append((tokens, last, value))
        for candidates in self._by_first.values():
            candidates.sort(key=lambda item: len(item[0]), reverse=True)

    def match_at(self, words: list[str], i: int) -> tuple[int, Any] | None:
        """(length, value) of the longest phrase starting at ``words[i]``, or None."""
        for tokens, last, value in self._by_first.get(words[i], ()):
            n = len(tokens)
            if i + n <= len(words) and words[i + n - 1] in last and all(
                    words[i + k] == tokens[k] for k in range(n - 1)):
                return n, value
        return None

    def find_all(self, words: list[str], skip: set[int] | None = None) -> list[tuple[int, int, Any]]:
        """Non-overlapping (start, end, value) matches, longest first at each position; no match uses a
        position of ``skip``."""
        found, i = [], 0
        skip = skip or set()
        while i < len(words):
            hit = None if i in skip else self.match_at(words, i)
            if hit is not None and any(k in skip for k in range(i, i + hit[0])):
                hit = None
            if hit is None:
                i += 1
                continue
            found.append((i, i + hit[0], hit[1]))
            i += hit[0]
        return found


@dataclass(frozen=True)
class Mention:
    """One entity mention in a sentence, with its assertion status (1 / 0 / -1) and the trigger that set it."""

    entity: str
    status: int
    sentence: str
    start: int
    end: int
    text: str
    trigger: str | None = None


@dataclass(frozen=True)
class _Trigger:
    kind: str  # "neg" | "unc" | "hyp" | "prob" | "pseudo" | "term" | "alt"
    direction: str  # "pre" | "post" | "both" | ""
    start: int
    end: int
    phrase: str


def _trigger_table(alternatives: str) -> dict[str, tuple[str, str]]:
    """Phrase -> (kind, direction). Longer phrases win at match time, so overlaps are intentional."""
    table: dict[str, tuple[str, str]] = {}
    for phrase in TERMINATORS:
        table[phrase] = ("term", "")
    for kind, pre, post in (("neg", NEGATION_PRE, NEGATION_POST), ("unc", UNCERTAIN_PRE, UNCERTAIN_POST),
                            ("hyp", HYPOTHETICAL_PRE, HYPOTHETICAL_POST)):
        for phrase in pre:
            table[phrase] = (kind, "pre")
        for phrase in post:
            table[phrase] = (kind, "both" if table.get(phrase) == (kind, "pre") else "post")
    for phrase in PROBABLE:
        table[phrase] = ("prob", "")
    if alternatives == "uncertain":
        for phrase in _ALTERNATIVE_WORDS:
            table[phrase] = ("alt", "")
    for phrase in PSEUDO_TRIGGERS:
        table[phrase] = ("pseudo", "")
    return table


_CLAUSE_OPENERS = frozenset({"the", "there", "this", "these", "those", "it", "its", "which"})
_CONJUNCTIONS = frozenset({"and", "but", "while", "whereas", "although"})


def _opens_clause(words: list[str], i: int) -> bool:
    """Whether a new clause starts at ``words[i]`` (after an optional conjunction): "and the heart ..."."""
    if i < len(words) and words[i] in _CONJUNCTIONS:
        i += 1
    return i < len(words) and words[i] in _CLAUSE_OPENERS


class _Sentence:
    """The tokens, mentions and triggers of one sentence, with the scope arithmetic."""

    def __init__(self, words: list[str], triggers: list[_Trigger], mention_starts: set[int],
                 max_scope: int) -> None:
        self.words, self.triggers, self.max_scope = words, triggers, max_scope
        self.terminators = [t.start for t in triggers if t.kind == "term"]
        self.all_commas = [i for i, w in enumerate(words) if w == ","]
        # ... and any scope at a comma that opens a new clause: "no effusion, and the heart is enlarged"
        self.clause_commas = [i for i in self.all_commas if _opens_clause(words, i + 1)]
        # A comma ends a backward scope unless it separates the items of a list of findings.
        self.commas = [i for i, w in enumerate(words) if w == "," and not (
            i + 1 in mention_starts or (i + 2 in mention_starts and words[i + 1] in ("and", "or")))]

    def scope(self, trigger: _Trigger) -> tuple[range, range]:
        """Token ranges a trigger covers forward and backward."""
        n = len(self.words)
        if trigger.kind == "alt":  # only the two findings it links
            return range(trigger.end, trigger.end + 1), range(max(trigger.start - 1, 0), trigger.start)
        forward = backward = range(0)
        if trigger.direction in ("pre", "both"):
            # a hypothetical or historical clause ends at its comma: "given a history of CHF, findings represent
            # edema" asserts the edema
            stops = self.terminators + (self.all_commas if trigger.kind == "hyp" else self.clause_commas)
            stop = min([t for t in stops if t >= trigger.end] + [n, trigger.end + self.max_scope])
            forward = range(trigger.end, stop)
        if trigger.direction in ("post", "both"):
            stops = [t + 1 for t in self.terminators + self.commas if t < trigger.start]
            backward = range(max(stops + [0, trigger.start - self.max_scope]), trigger.start)
        return forward, backward

    def covers(self, trigger: _Trigger, span: tuple[int, int]) -> bool:
        forward, backward = self.scope(trigger)
        return any(i in forward or i in backward for i in range(*span))

    def first(self, kind: str, span: tuple[int, int]) -> _Trigger | None:
        return next((t for t in self.triggers if t.kind == kind and self.covers(t, span)), None)


class ReportLabeler:
    """Label reports with the vocabulary's entities: ``ReportLabeler(vocab).label(text) -> {entity: 1/0/-1}``.

    ``alternatives`` says how "A versus B" / "A or B" / "A/B" between two findings is read: ``"present"``
    (default) or ``"uncertain"`` (see the module docstring).
    """

    def __init__(self, vocab: Vocabulary | None = None, sections: Iterable[str] = LABEL_SECTIONS,
                 max_scope: int = MAX_SCOPE, alternatives: str = "present") -> None:
        if alternatives not in ALTERNATIVES:
            raise ValueError(f"alternatives must be one of {', '.join(ALTERNATIVES)} (got {alternatives!r})")
        self.vocab = vocab or load_vocabulary()
        self.sections = tuple(sections)
        self.max_scope = max_scope
        self.alternatives = alternatives
        # A display name that is itself a negation ("No finding") is not a term: "no findings to suggest
        # pneumonia" is a negated pneumonia, not a normal study. Such entities are found through synonyms.
        terms = {term: entity.id for entity in self.vocab for term in entity.terms
                 if not (term == entity.name.lower() and term.split()[0] in ("no", "not", "without"))}
        absent = {phrase.lower(): entity.id for entity in self.vocab for phrase in entity.absent_phrases}
        self._absent = PhraseMatcher(absent)
        self._blocked = PhraseMatcher(dict.fromkeys(NOT_ENTITIES, None), plurals=True)
        self._terms = PhraseMatcher(terms, plurals=True)
        self._triggers = PhraseMatcher(_trigger_table(alternatives))
        self._cooccurrence = {e: rule for e, rule in COOCCURRENCE.items() if e in self.vocab}
        self._exclusions = {e: words for e, words in ENTITY_EXCLUSIONS.items() if e in self.vocab}
        self._devices = {e.id for e in self.vocab if e.category == "device"}
        self._parents = {e.id: [p for p in e.parents if p in self.vocab] for e in self.vocab if e.parents}

    # -- sentence level
    def _cooccurrences(self, words: list[str], taken: set[int]) -> list[tuple[int, int, str]]:
        """(start, end, entity) for head/modifier pairs of :data:`COOCCURRENCE` in one clause."""
        found = []
        for entity, (heads, modifiers, window) in self._cooccurrence.items():
            for i, word in enumerate(words):
                if word not in heads or i in taken:
                    continue
                for j in sorted(range(max(0, i - window - 1), min(len(words), i + window + 2)),
                                key=lambda k: abs(k - i)):
                    a, b = min(i, j), max(i, j)
                    if (j != i and words[j] in modifiers and j not in taken
                            and not any(w in _CLAUSE_BREAKS for w in words[a + 1:b])):
                        found.append((a, b + 1, entity))
                        break
        return found

    def mentions_in_sentence(self, sentence: str) -> list[Mention]:
        """Every entity mention of one sentence with its status (hypothetical mentions are left out)."""
        tokens = tokenize(sentence, drop=FILLER_WORDS)
        words = [t.text for t in tokens]
        if NON_CHEST_PARTS.intersection(words):
            return []
        blocked = {i for s, e, _ in self._blocked.find_all(words) for i in range(s, e)}
        absent = self._absent.find_all(words, skip=blocked)
        absent_taken = blocked | {i for s, e, _ in absent for i in range(s, e)}
        matches = self._terms.find_all(words, skip=absent_taken)
        taken = absent_taken | {i for s, e, _ in matches for i in range(s, e)}
        pairs = self._cooccurrences(words, taken)
        matches += pairs
        # only the head and the modifier of a pair are taken: the words between them may be triggers
        # ("the heart is not significantly enlarged")
        taken |= {i for s, e, _ in pairs for i in (s, e - 1)}
        # The last word of an absent phrase may start a trigger ("lungs are clear of effusion"), and so may the
        # negation that opens a no-finding phrase ("no acute findings/opacities/infiltrates").
        trigger_skip = taken - {e - 1 for _, e, _ in absent} - {
            s for s, _, entity in matches if entity == NO_FINDING and words[s] in ("no", "without")}
        starts = {s for s, _, _ in matches}
        triggers = [_Trigger(kind, direction, s, e, " ".join(words[s:e]))
                    for s, e, (kind, direction) in self._triggers.find_all(words, skip=trigger_skip)]
        triggers = [t for t in triggers if t.kind != "alt" or (t.start in {e for _, e, _ in matches}
                                                                 and t.end in starts)]
        context = _Sentence(words, triggers, starts, self.max_scope)
        negations = [t for t in triggers if t.kind == "neg"]
        # An uncertainty trigger inside a negation scope is negated ("no evidence to suggest pneumonia").
        context.triggers = [t for t in triggers if t.kind not in ("unc", "alt")
                            or not any(context.covers(n, (t.start, t.end)) for n in negations)]
        out = [self._mention(sentence, tokens, s, e, entity, ABSENT, "absent phrase") for s, e, entity in absent]
        for start, end, entity in sorted(matches):
            if entity in self._exclusions and self._exclusions[entity].intersection(words):
                continue
            span = (start, end)
            if entity == NO_FINDING:  # its negation is part of its meaning ("no acute process")
                out.append(self._mention(sentence, tokens, start, end, entity, PRESENT, None))
                continue
            if context.first("hyp", span) is not None:
                continue
            unsure = context.first("unc", span) or context.first("alt", span)
            negated = context.first("neg", span)
            if unsure is not None:
                out.append(self._mention(sentence, tokens, start, end, entity, UNCERTAIN, unsure.phrase))
            elif negated is not None:
                out.append(self._mention(sentence, tokens, start, end, entity, ABSENT, negated.phrase))
            else:
                out.append(self._mention(sentence, tokens, start, end, entity, PRESENT, None))
        return out

    @staticmethod
    def _mention(sentence: str, tokens: list[Token], start: int, end: int, entity: str, status: int,
                 cause: str | None) -> Mention:
        a, b = tokens[start].start, tokens[end - 1].end
        return Mention(entity, status, sentence, a, b, sentence[a:b], cause)

    # -- report level
    def mentions(self, text: str, whole_text: bool = False) -> list[Mention]:
        """Mentions in the labelled sections of a report (or in all of ``text`` when ``whole_text``)."""
        body = _clean(text) if whole_text else label_text(text, self.sections)
        return [m for sentence in split_sentences(body) for m in self.mentions_in_sentence(sentence)]

    def label(self, text: str) -> dict[str, int]:
        """Per-study labels ``{entity_id: 1 | 0 | -1}``; entities never mentioned are absent."""
        return self.aggregate(self.mentions(text))

    def aggregate(self, mentions: Iterable[Mention]) -> dict[str, int]:
        """Combine mentions: present > uncertain > absent; then the no-finding rule (see module docstring)."""
        rank = {PRESENT: 2, UNCERTAIN: 1, ABSENT: 0}
        labels: dict[str, int] = {}
        for mention in mentions:
            current = labels.get(mention.entity)
            if current is None or rank[mention.status] > rank[current]:
                labels[mention.entity] = mention.status
        self._roll_up(labels, rank)
        return self._apply_no_finding(labels)

    def _roll_up(self, labels: dict[str, int], rank: dict[int, int]) -> None:
        """A child's status also counts for its parents (nodule -> lung_lesion, chest tube -> support_devices),
        with the same precedence as mentions, the way CheXpert's classes group findings."""
        for entity, status in list(labels.items()):
            for parent in self._parents.get(entity, ()):
                current = labels.get(parent)
                if current is None or rank[status] > rank[current]:
                    labels[parent] = status

    def _apply_no_finding(self, labels: dict[str, int]) -> dict[str, int]:
        if "no_finding" not in self.vocab:
            return labels
        findings = {k: v for k, v in labels.items() if k != "no_finding" and k not in self._devices}
        if any(v in (PRESENT, UNCERTAIN) for v in findings.values()):
            labels["no_finding"] = ABSENT
        elif findings or labels.get("no_finding") == PRESENT:
            labels["no_finding"] = PRESENT
        return labels

    def positive_sentences(self, text: str) -> list[tuple[str, str]]:
        """(entity, sentence) for every sentence that asserts an entity as present (for knowledge harvesting)."""
        seen: set[tuple[str, str]] = set()
        out = []
        for mention in self.mentions(text):
            key = (mention.entity, mention.sentence)
            if mention.status == PRESENT and mention.entity != "no_finding" and key not in seen:
                seen.add(key)
                out.append(key)
        return out


# ------------------------------------------------------------------------------------------ RadGraph


_RADGRAPH_STATUS = {
    "OBS-DP": PRESENT, "OBS-DA": ABSENT, "OBS-U": UNCERTAIN,
    "Observation::definitely present": PRESENT, "Observation::definitely absent": ABSENT,
    "Observation::uncertain": UNCERTAIN,
}


def _radgraph_entities(entry: dict[str, Any]) -> dict[str, Any]:
    if "entities" in entry:
        return entry["entities"]
    for annotator in ("labeler_1", "labeler_2"):  # the test split nests annotations per annotator
        if annotator in entry and "entities" in entry[annotator]:
            return entry[annotator]["entities"]
    raise ValueError("RadGraph entry has no 'entities' (nor labeler_1/labeler_2)")


def labels_from_radgraph(entry: dict[str, Any], labeler: ReportLabeler | None = None) -> dict[str, int]:
    """Per-study labels from one RadGraph annotation (the value of a report key in MIMIC-CXR_graphs.json).

    Each observation is read together with the observations that ``modify`` it, in text order ("pleural" +
    "effusion"), matched against the vocabulary, and given the status of its RadGraph label.
    """
    labeler = labeler or ReportLabeler()
    entities = _radgraph_entities(entry)
    modifiers: dict[str, list[str]] = {}
    for key, ent in entities.items():
        for relation, target in ent.get("relations", []):
            if relation == "modify":
                modifiers.setdefault(str(target), []).append(key)
    mentions = []
    for key, ent in entities.items():
        status = _RADGRAPH_STATUS.get(ent.get("label", ""))
        if status is None:
            continue
        parts = sorted([ent, *(entities[m] for m in modifiers.get(key, []) if m in entities)],
                       key=lambda e: e.get("start_ix", 0))
        phrase = " ".join(str(p.get("tokens", "")) for p in parts)
        words = [t.text for t in tokenize(phrase)]
        for start, end, entity in labeler._terms.find_all(words):
            mentions.append(Mention(entity, status, phrase, start, end, " ".join(words[start:end]), "radgraph"))
    return labeler.aggregate(mentions)
