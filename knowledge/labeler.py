"""A rule-based radiology report labeler (in the spirit of NegEx / the CheXpert labeler, our own rules).

Pipeline: MIMIC report text -> sections (:func:`parse_sections`) -> sentences (:func:`split_sentences`) ->
tokens -> entity mentions (vocabulary names and synonyms, longest match wins, plural endings accepted) ->
negation / uncertainty scopes -> per-study labels.

Scopes. A *trigger* ("no", "without", "possible", "cannot be excluded", ...) opens a scope forward (pre
triggers), backward (post triggers) or both, within its sentence, stopped by a *terminator* ("but",
"however", "which", ";", ...) or after ``MAX_SCOPE`` tokens. *Pseudo-triggers* ("no change", "no interval
change", "not only") are consumed first so that "no change in the small left effusion" stays positive.
"Cannot exclude" style double negations are uncertainty triggers. An uncertainty trigger that is itself inside
a negation scope ("no findings to suggest pneumonia") is negated.

Labels per study: 1 present, 0 absent, -1 uncertain; entities never mentioned are absent from the dict. Across
mentions, present beats uncertain beats absent (a study that says "no effusion on the left, small effusion on
the right" has an effusion). A child's status also counts for its parents (nodule -> lung_lesion, chest tube
-> support_devices). ``no_finding`` is 1 when stated ("no acute cardiopulmonary process") or when every
mentioned finding is absent, and 0 as soon as any non-device finding is present or uncertain.

Optional: :func:`labels_from_radgraph` converts a RadGraph annotation (OBS-DP/OBS-DA/OBS-U) to the same labels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from knowledge.vocabulary import Vocabulary, load_vocabulary

PRESENT, ABSENT, UNCERTAIN = 1, 0, -1
MAX_SCOPE = 12
"""Tokens a trigger reaches at most (enough for "no pleural effusion, pneumothorax or focal consolidation")."""
LABEL_SECTIONS = ("findings", "impression")

# ------------------------------------------------------------------------------------------ trigger lists
# Each trigger is a lower-case token sequence. Direction: "pre" scopes forward, "post" backward, "both" both.
NEGATION_PRE = (
    "no", "not", "without", "negative for", "free of", "absence of", "absent", "no evidence of",
    "no signs of", "no sign of", "no radiographic evidence of", "no findings of", "rather than", "neither", "nor",
    "resolution of", "interval resolution of", "resolved", "clear of", "no definite", "no convincing",
    "removal of", "never",
)
NEGATION_POST = (
    "not seen", "not identified", "not present", "not visualized", "not appreciated", "not evident",
    "not demonstrated", "not visible", "not detected", "has resolved", "have resolved", "resolved",
    "is absent", "are absent", "no longer seen", "no longer present", "no longer visualized", "no longer",
    "has been removed", "have been removed", "removed", "ruled out", "excluded",
)
UNCERTAIN_PRE = (
    "may", "might", "could", "possible", "possibly", "probable", "probably", "likely", "suspicious for",
    "suspected", "suspect", "concern for", "concerning for", "question of", "questionable", "cannot exclude",
    "can not exclude", "cannot rule out", "can not rule out", "differential diagnosis", "suggestive of",
    "suggest", "suggests", "suggesting", "worrisome for", "equivocal", "presumed", "possibility of",
    "indeterminate", "may represent", "could represent", "compatible with", "versus", "vs", "or",
    "raising the possibility of", "not excluded", "?",
)
UNCERTAIN_POST = (
    "cannot be excluded", "can not be excluded", "could not be excluded", "not excluded", "not be excluded",
    "cannot be ruled out", "can not be ruled out", "not ruled out", "not be ruled out", "not entirely excluded",
    "is possible", "is suspected", "is likely", "is questioned", "are possible", "versus", "vs", "likely",
    "possible", "suspected", "questionable", "?", "or",
)
PSEUDO_TRIGGERS = (
    "no change", "no interval change", "no significant change", "no significant interval change",
    "no substantial change", "no appreciable change", "no increase", "no decrease", "not changed",
    "not significantly changed", "without change", "without interval change", "not only", "no further change",
    "without significant change", "no definite change",
)
TERMINATORS = (
    "but", "however", "although", "though", "nevertheless", "yet", "still", "aside from", "apart from",
    "except", "except for", "other than", "which", "who", "there is", "there are", "there has been",
    "there have been", "secondary to", "due to", "as well as", ";", ":", "while", "whereas",
)

# "or" only creates uncertainty when it links two findings ("atelectasis or pneumonia"), never in a negated list
# ("no effusion or pneumothorax"): handled in _is_uncertain_or.
_ORDINAL_ABBREVIATIONS = {"dr", "mr", "mrs", "ms", "vs", "approx", "e.g", "i.e", "fig", "st"}
FILLER_WORDS = frozenset({"mildly", "moderately", "severely", "markedly", "slightly", "minimally", "somewhat"})
"""Degree adverbs skipped while matching, so "heart size is mildly enlarged" matches "heart size is enlarged"."""
_SECTION_HEADER = re.compile(r"(?:^|\n)[ \t]?([A-Z][A-Z ()/,&-]*[A-Z)])[ \t]*:", re.MULTILINE)
_TOKEN = re.compile(r"[a-z0-9]+(?:['\-/][a-z0-9]+)*|[;:?]")
_LIST_MARKER = re.compile(r"^\s*(?:\d{1,2}|[a-z])[.)]\s+")


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


def split_sentences(text: str) -> list[str]:
    """Rule-based sentence splitting: ``.``/``!``/``?`` followed by space, not after an abbreviation, a list
    marker (``1.``) or a decimal; list markers are stripped from the start of sentences."""
    text = _clean(text)
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
    out = []
    for sentence in sentences:
        sentence = sentence.strip()
        while _LIST_MARKER.match(sentence):
            sentence = _LIST_MARKER.sub("", sentence, count=1)
        if re.search(r"[A-Za-z]", sentence):
            out.append(sentence)
    return out


# ------------------------------------------------------------------------------------------ matching


@dataclass(frozen=True)
class Token:
    text: str
    start: int
    end: int


def tokenize(sentence: str, drop: frozenset[str] = frozenset()) -> list[Token]:
    """Lower-case word tokens (and ``; : ?``) with character offsets, minus the words in ``drop``."""
    lowered = sentence.lower()
    return [Token(m.group(0), m.start(), m.end()) for m in _TOKEN.finditer(lowered) if m.group(0) not in drop]


def _phrase_tokens(phrase: str) -> tuple[str, ...]:
    return tuple(t.text for t in tokenize(phrase))


class PhraseMatcher:
    """Longest-match, left-to-right, non-overlapping matching of token sequences; the last token of a phrase
    also matches its plural (``-s``/``-es``) when ``plurals`` is set."""

    def __init__(self, phrases: dict[str, Any], plurals: bool = False) -> None:
        self._by_first: dict[str, list[tuple[tuple[str, ...], Any]]] = {}
        self.plurals = plurals
        for phrase, value in phrases.items():
            tokens = _phrase_tokens(phrase)
            if tokens:
                self._by_first.setdefault(tokens[0], []).append((tokens, value))
                if plurals and len(tokens) == 1:
                    for suffix in ("s", "es"):
                        self._by_first.setdefault(tokens[0] + suffix, []).append(((tokens[0] + suffix,), value))
        for candidates in self._by_first.values():
            candidates.sort(key=lambda item: len(item[0]), reverse=True)

    def _token_matches(self, token: str, wanted: str, is_last: bool) -> bool:
        if token == wanted:
            return True
        return self.plurals and is_last and token in (wanted + "s", wanted + "es")

    def match_at(self, words: list[str], i: int) -> tuple[int, Any] | None:
        """(length, value) of the longest phrase starting at ``words[i]``, or None."""
        for tokens, value in self._by_first.get(words[i], ()):
            n = len(tokens)
            if i + n <= len(words) and all(
                self._token_matches(words[i + k], tokens[k], k == n - 1) for k in range(n)
            ):
                return n, value
        return None

    def find_all(self, words: list[str], skip: set[int] | None = None) -> list[tuple[int, int, Any]]:
        """Non-overlapping (start, end, value) matches, longest first at each position."""
        found, i = [], 0
        skip = skip or set()
        while i < len(words):
            hit = None if i in skip else self.match_at(words, i)
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
    kind: str  # "neg" | "unc" | "pseudo" | "term"
    direction: str  # "pre" | "post" | "both" | ""
    start: int
    end: int
    phrase: str


def _trigger_table() -> dict[str, tuple[str, str]]:
    """Phrase -> (kind, direction). Longer phrases win at match time, so overlaps are intentional."""
    table: dict[str, tuple[str, str]] = {}
    for phrase in TERMINATORS:
        table[phrase] = ("term", "")
    for kind, pre, post in (("neg", NEGATION_PRE, NEGATION_POST), ("unc", UNCERTAIN_PRE, UNCERTAIN_POST)):
        for phrase in pre:
            table[phrase] = (kind, "pre")
        for phrase in post:
            table[phrase] = (kind, "both" if table.get(phrase) == (kind, "pre") else "post")
    for phrase in PSEUDO_TRIGGERS:
        table[phrase] = ("pseudo", "")
    return table


class ReportLabeler:
    """Label reports with the vocabulary's entities: ``ReportLabeler(vocab).label(text) -> {entity: 1/0/-1}``."""

    def __init__(self, vocab: Vocabulary | None = None, sections: Iterable[str] = LABEL_SECTIONS,
                 max_scope: int = MAX_SCOPE) -> None:
        self.vocab = vocab or load_vocabulary()
        self.sections = tuple(sections)
        self.max_scope = max_scope
        # A display name that is itself a negation ("No finding") is not a term: "no findings to suggest
        # pneumonia" is a negated pneumonia, not a normal study. Such entities are found through synonyms.
        terms = {term: entity.id for entity in self.vocab for term in entity.terms
                 if not (term == entity.name.lower() and term.split()[0] in ("no", "not", "without"))}
        absent = {phrase.lower(): entity.id for entity in self.vocab for phrase in entity.absent_phrases}
        self._absent = PhraseMatcher(absent)
        self._terms = PhraseMatcher(terms, plurals=True)
        self._triggers = PhraseMatcher(_trigger_table())
        self._devices = {e.id for e in self.vocab if e.category == "device"}
        self._parents = {e.id: [p for p in e.parents if p in self.vocab] for e in self.vocab if e.parents}

    # -- sentence level
    def _find_triggers(self, words: list[str], taken: set[int]) -> list[_Trigger]:
        return [_Trigger(kind, direction, s, e, " ".join(words[s:e]))
                for s, e, (kind, direction) in self._triggers.find_all(words, skip=taken)]

    def _scope(self, trigger: _Trigger, terminators: list[int], n_words: int) -> tuple[range, range]:
        """Token ranges a trigger covers forward and backward, cut at the nearest terminator."""
        if trigger.phrase == "or":  # only the two findings it links
            return range(trigger.end, trigger.end + 1), range(max(trigger.start - 1, 0), trigger.start)
        forward = backward = range(0)
        if trigger.direction in ("pre", "both"):
            stop = min([t for t in terminators if t >= trigger.end] + [n_words, trigger.end + self.max_scope])
            forward = range(trigger.end, stop)
        if trigger.direction in ("post", "both"):
            stop = max([t + 1 for t in terminators if t < trigger.start] + [0, trigger.start - self.max_scope])
            backward = range(stop, trigger.start)
        return forward, backward

    def _covers(self, trigger: _Trigger, span: tuple[int, int], terminators: list[int], n_words: int) -> bool:
        """Whether any token of ``span`` (start, end) lies in the trigger's scope."""
        forward, backward = self._scope(trigger, terminators, n_words)
        return any(i in forward or i in backward for i in range(*span))

    def _is_uncertain_or(self, trigger: _Trigger, matches: list[tuple[int, int, str]]) -> bool:
        """"or" signals uncertainty only between two findings ("atelectasis or pneumonia")."""
        before = any(end == trigger.start for _, end, _ in matches)
        after = any(start == trigger.end for start, _, _ in matches)
        return before and after

    def mentions_in_sentence(self, sentence: str) -> list[Mention]:
        """Every entity mention of one sentence with its status."""
        tokens = tokenize(sentence, drop=FILLER_WORDS)
        words = [t.text for t in tokens]
        absent = self._absent.find_all(words)
        taken = {i for s, e, _ in absent for i in range(s, e)}
        matches = self._terms.find_all(words, skip=taken)
        taken |= {i for s, e, _ in matches for i in range(s, e)}
        triggers = [t for t in self._find_triggers(words, taken)
                    if t.phrase != "or" or self._is_uncertain_or(t, matches)]
        terminators = [t.start for t in triggers if t.kind == "term"]
        negations = [t for t in triggers if t.kind == "neg"]
        # An uncertainty trigger inside a negation scope is negated ("no evidence to suggest pneumonia").
        uncertain = [t for t in triggers if t.kind == "unc"
                     and not any(self._covers(n, (t.start, t.end), terminators, len(words)) for n in negations)]
        out = [self._mention(sentence, tokens, s, e, entity, ABSENT, "absent phrase") for s, e, entity in absent]
        for start, end, entity in matches:
            status, cause = PRESENT, None
            span = (start, end)
            negated = next((t for t in negations if self._covers(t, span, terminators, len(words))), None)
            unsure = next((t for t in uncertain if self._covers(t, span, terminators, len(words))), None)
            if unsure is not None:
                status, cause = UNCERTAIN, unsure.phrase
            elif negated is not None:
                status, cause = ABSENT, negated.phrase
            out.append(self._mention(sentence, tokens, start, end, entity, status, cause))
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
