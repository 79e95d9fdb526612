"""Text cleaning, sentence splitting and content hashing for crawled descriptions.

Pure functions (no Scrapy), shared by the spiders, the item pipelines and the tests:

* :func:`clean_text` removes what a page adds around the prose: reference markers (``[1]``, ``[2-4]``,
  ``[citation needed]``, ``[edit]``), invisible characters (zero-width spaces, soft hyphens, BOMs),
  compatibility forms (NFKC) and runs of whitespace.
* :func:`split_sentences` is a rule-based splitter that knows the abbreviations of radiology prose
  (``e.g.``, ``i.e.``, ``cf.``, ``approx.``, ``et al.``, initials, decimals), so "approx. 2.5 cm" stays whole.
* :func:`sentence_id` is the content hash used to deduplicate: sha256 of entity + normalised sentence.
* :func:`normalise_term` maps names and synonyms to a matching key ("Pulmonary oedema" == "pulmonary edema").
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

# Zero-width and other invisible characters seen in headings and copied prose (and the soft hyphen).
INVISIBLE = re.compile("[\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
# [1], [12], [1,2], [1-3], [1–3], [a], [citation needed], [edit], [note 2] ...
REFERENCE_MARKER = re.compile(
    r"\[\s*(?:\d+(?:\s*[,\u2013\u2014-]\s*\d+)*|[a-z]|citation needed|clarification needed|edit|note \d+|"
    r"dubious|when\?|who\?|according to whom\?)\s*\]",
    re.IGNORECASE,
)
SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?)\]])")
SPACE_AFTER_OPEN = re.compile(r"([(\[])\s+")
WHITESPACE = re.compile(r"\s+")

# Tokens that end with a full stop but do not end a sentence (compared case-insensitively, without the dot).
# Units (cm, mm) are left out on purpose: "measures 2 cm." ends sentences far more often than it abbreviates.
ABBREVIATIONS = frozenset(
    ["e.g", "i.e", "cf", "vs", "al", "approx", "ca", "fig", "figs", "dr", "prof", "mr", "mrs", "ms", "st", "nos", "vol", "ref", "refs", "resp", "incl", "esp", "viz"]
)
SENTENCE_END = re.compile(r"([.!?])([\"')\]]*)\s+(?=[\"'(\[]?[A-Z0-9])")

# Sentences that are page furniture rather than description.
BOILERPLATE = re.compile(
    r"^(see also|references?|external links|further reading|edit this (page|article)|"
    r"this article (is a stub|needs)|you can help|please (cite|help|log in|sign in)|"
    r"loading( images)?\W*$|last revised|cite this|retrieved from|jump to|"
    r"text is available under|this page was last edited|unable to process the form)",
    re.IGNORECASE,
)


def clean_text(text: str) -> str:
    """Normalise a block of page text: NFKC, no invisible characters or reference markers, single spaces."""
    text = unicodedata.normalize("NFKC", text)
    text = INVISIBLE.sub("", text)
    text = REFERENCE_MARKER.sub("", text)
    text = WHITESPACE.sub(" ", text)
    text = SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = SPACE_AFTER_OPEN.sub(r"\1", text)
    return text.strip()


def _ends_with_abbreviation(chunk: str) -> bool:
    """True when ``chunk`` (text up to and including a full stop) ends in an abbreviation or an initial."""
    last = chunk.rstrip(".").rsplit(None, 1)[-1] if chunk.strip(". ") else ""
    bare = last.strip("(\"'[").lower()
    if bare in ABBREVIATIONS:
        return True
    # single-letter initials ("A. Smith") and dotted abbreviations ("e.g", "U.S")
    return len(bare) == 1 and bare.isalpha() or bool(re.fullmatch(r"(?:[a-z]\.)+[a-z]", bare))


def split_sentences(text: str) -> list[str]:
    """Split cleaned prose into sentences; a block without final punctuation (a bullet) is one sentence."""
    text = text.strip()
    if not text:
        return []
    sentences: list[str] = []
    start = 0
    for match in SENTENCE_END.finditer(text):
        end = match.end(2)
        chunk = text[start:end]
        if match.group(1) == "." and _ends_with_abbreviation(chunk):
            continue
        sentences.append(chunk.strip())
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return [s for s in sentences if s]


def is_boilerplate(sentence: str) -> bool:
    """True for page furniture ("See also", "Text is available under ...", "Loading images...")."""
    return bool(BOILERPLATE.match(sentence.strip()))


def word_count(sentence: str) -> int:
    return len(re.findall(r"[A-Za-z0-9]+", sentence))


def dedupe_key(sentence: str) -> str:
    """The sentence as compared for duplicates: case-folded, punctuation-insensitive, single spaces."""
    folded = unicodedata.normalize("NFKC", sentence).casefold()
    return WHITESPACE.sub(" ", re.sub(r"[^\w\s]", " ", folded)).strip()


def sentence_id(entity: str, sentence: str) -> str:
    """sha256 hex of ``entity`` + the normalised sentence (the ``id`` field of the crawl output)."""
    return hashlib.sha256(f"{entity}\n{dedupe_key(sentence)}".encode()).hexdigest()


# British spellings folded to American ones for matching titles against vocabulary terms.
_SPELLING = ((re.compile(r"oe"), "e"), (re.compile(r"ae"), "e"), (re.compile(r"isation"), "ization"))


def normalise_term(term: str) -> str:
    """A matching key for names, synonyms and page titles: case/spelling/punctuation-insensitive."""
    key = clean_text(term).casefold()
    key = re.sub(r"\s*\((?:disambiguation|medicine|radiology|medical)\)\s*$", "", key)
    key = re.sub(r"[^\w\s]", " ", key.replace("_", " "))
    for pattern, replacement in _SPELLING:
        key = pattern.sub(replacement, key)
    return WHITESPACE.sub(" ", key).strip()
