"""Article HTML -> text blocks with their heading path, and the rules that pick the radiographic ones.

Encyclopedia bodies (Radiopaedia style) are a flat run of ``<p>``, ``<ul>`` and ``<h4>``/``<h5>``/``<h6>``:
a section is everything between a heading and the next heading of equal or higher level. MediaWiki wraps
headings in ``div.mw-heading`` (MediaWiki >= 1.43) or puts the text in ``span.mw-headline`` (older skins).
:func:`walk_blocks` handles both, at any heading level h2-h6, and returns one :class:`Block` per paragraph or
list item. A :class:`SectionRule` then keeps the blocks whose heading path names plain radiography.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from lxml import html as lxml_html

from crawlers.text import clean_text, split_sentences

HEADING = re.compile(r"^h([2-6])$")
# Elements whose text is never prose: citation markers, edit links, navigation, tables of contents, figures.
SKIP_CLASSES = frozenset(
    ["reference", "mw-editsection", "reflist", "references", "navbox", "toc", "thumb", "hatnote", "mw-empty-elt", "metadata", "noprint", "hidden", "infobox", "sidebar", "citation-needed", "ref"]
)
SKIP_TAGS = frozenset({"sup", "script", "style", "table", "figure", "noscript", "nav", "aside", "img", "math"})
BLOCK_TAGS = frozenset({"p", "li", "dd", "blockquote"})
LIST_TAGS = frozenset({"ul", "ol", "dl"})

# Modality headings that are NOT the chest radiograph: blocks under them are never descriptions for us.
OTHER_MODALITIES = (
    r"^(ct|computed tomography|ct scan|hrct|mri?|magnetic resonance( imaging)?|ultrasound|ultrasonography|"
    r"sonography|echocardiography|nuclear medicine|pet(/ct)?|v/?q|angiography|dsa|fluoroscopy|mammography|"
    r"treatment( and prognosis)?|differential diagnosis|history and etymology|pathology|epidemiology)$"
)


@dataclass(frozen=True)
class Block:
    """One paragraph or list item: its cleaned text and the headings above it (outermost first)."""

    path: tuple[str, ...]
    text: str

    @property
    def section(self) -> str:
        return " > ".join(self.path)


class ParseError(ValueError):
    """A page could not be understood (no title, no article body): recorded, never a crash."""


def _classes(element: lxml_html.HtmlElement) -> set[str]:
    return set((element.get("class") or "").split())


def _skipped(element: lxml_html.HtmlElement) -> bool:
    tag = element.tag if isinstance(element.tag, str) else ""
    return tag in SKIP_TAGS or bool(_classes(element) & SKIP_CLASSES) or element.get("hidden") is not None


def element_text(element: lxml_html.HtmlElement, *, drop_lists: bool = False) -> str:
    """Visible prose of ``element`` without citation markers, edit links or (optionally) nested lists."""
    clone = copy.deepcopy(element)
    for child in list(clone.iter()):
        if child is clone or not isinstance(child.tag, str):
            continue
        if _skipped(child) or (drop_lists and child.tag in LIST_TAGS):
            child.drop_tree()  # keeps the tail text, unlike remove()
    return clean_text(clone.text_content())


def heading_text(element: lxml_html.HtmlElement) -> str:
    """The heading's own words (``span.mw-headline`` when present), without ``<sup>`` or edit links."""
    headline = element.find_class("mw-headline")
    return element_text(headline[0] if headline else element).rstrip(":").strip()


def _heading_of(element: lxml_html.HtmlElement) -> tuple[int, lxml_html.HtmlElement] | None:
    tag = element.tag if isinstance(element.tag, str) else ""
    match = HEADING.match(tag)
    if match:
        return int(match.group(1)), element
    if tag == "div" and "mw-heading" in _classes(element):
        for child in element:
            inner = HEADING.match(child.tag) if isinstance(child.tag, str) else None
            if inner:
                return int(inner.group(1)), child
    return None


def walk_blocks(container: lxml_html.HtmlElement) -> list[Block]:
    """Every paragraph / list item under ``container`` in document order, with its heading path."""
    stack: list[tuple[int, str]] = []
    blocks: list[Block] = []

    def visit(element: lxml_html.HtmlElement) -> None:
        for child in element:
            if not isinstance(child.tag, str) or _skipped(child):
                continue
            heading = _heading_of(child)
            if heading is not None:
                level, node = heading
                while stack and stack[-1][0] >= level:
                    stack.pop()
                stack.append((level, heading_text(node)))
            elif child.tag in BLOCK_TAGS:
                text = element_text(child, drop_lists=True)
                if text:
                    blocks.append(Block(tuple(name for _, name in stack), text))
                visit_lists(child)
            elif child.tag in LIST_TAGS or child.tag in {"div", "section", "article", "main", "span"}:
                visit(child)

    def visit_lists(item: lxml_html.HtmlElement) -> None:
        for nested in item:
            if isinstance(nested.tag, str) and nested.tag in LIST_TAGS and not _skipped(nested):
                visit(nested)

    visit(container)
    return blocks


def _compile(patterns: Iterable[str]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, re.IGNORECASE) for p in patterns)


@dataclass(frozen=True)
class SectionRule:
    """Which blocks are radiographic descriptions.

    A block is kept when some heading on its path matches ``sections``; then, if that section has
    subsections matching ``modalities`` anywhere in the article, only blocks under those are kept (the
    "Plain radiograph" subsection of "Radiographic features"); otherwise the whole section is kept, minus
    subsections naming another modality (CT, MRI, ...).
    """

    sections: tuple[str, ...]
    modalities: tuple[str, ...] = ()
    exclude: tuple[str, ...] = (OTHER_MODALITIES,)
    _compiled: dict[str, tuple[re.Pattern[str], ...]] = field(default_factory=dict, compare=False, repr=False)

    def _patterns(self, name: str) -> tuple[re.Pattern[str], ...]:
        if name not in self._compiled:
            self._compiled[name] = _compile(getattr(self, name))
        return self._compiled[name]

    def _index(self, path: tuple[str, ...], name: str) -> int | None:
        for i, heading in enumerate(path):
            if any(p.search(heading) for p in self._patterns(name)):
                return i
        return None

    def select(self, blocks: list[Block]) -> list[Block]:
        in_section = [(b, i) for b in blocks if (i := self._index(b.path, "sections")) is not None]
        with_modality = [b for b, i in in_section if self._modality_below(b.path, i)]
        chosen = with_modality if with_modality else [b for b, i in in_section if len(b.path) == i + 1 or
                                                        not self._excluded(b.path[i + 1:])]
        return [b for b in chosen if not self._excluded(b.path[-1:])]

    def _modality_below(self, path: tuple[str, ...], section_index: int) -> bool:
        return any(any(p.search(h) for p in self._patterns("modalities")) for h in path[section_index + 1:])

    def _excluded(self, headings: tuple[str, ...]) -> bool:
        return any(any(p.search(h) for p in self._patterns("exclude")) for h in headings)


ENCYCLOPEDIA_RULE = SectionRule(
    sections=(r"^radiographic features$", r"^imaging features$"),
    modalities=(r"^(plain radiograph(y)?|chest radiograph(y)?|radiograph(y)?|plain film|chest x-?ray|x-?ray)$",),
)
MEDIAWIKI_RULE = SectionRule(
    sections=(r"^(medical )?imaging$", r"^radiograph(y|ic features)?$", r"^chest (x-?ray|radiograph(y)?)$",
              r"^x-?rays?$"),
    modalities=(r"^(chest )?(x-?rays?|radiograph(y|s)?|plain (film|radiograph(y)?))$",),
)


def parse_html(text: str) -> lxml_html.HtmlElement:
    """Parse page HTML leniently; :class:`ParseError` when nothing usable comes out."""
    try:
        root = lxml_html.document_fromstring(text)
    except (ValueError, lxml_html.etree.ParserError) as exc:
        raise ParseError(f"unparseable HTML: {exc}") from None
    return root


def first(root: lxml_html.HtmlElement, css_selectors: Iterable[str]) -> lxml_html.HtmlElement | None:
    """The first element matching any of ``css_selectors`` (tried in order)."""
    for selector in css_selectors:
        found = root.cssselect(selector)
        if found:
            return found[0]
    return None


def iter_sentences_of(blocks: list[Block]) -> Iterator[tuple[Block, str]]:
    """(block, sentence) for every sentence of every block, in order."""

    for block in blocks:
        for sentence in split_sentences(block.text):
            yield block, sentence
