"""The fixture website's content (``articles.yaml``) and its HTML rendering.

Pages are rendered from data so the tests have an oracle: :func:`expected_sentences` lists exactly the
sentences a correct crawl must extract per (source, entity title). The rendering deliberately adds what real
pages carry: ``<sup>`` citation markers, literal ``[3]`` reference markers, zero-width spaces in headings,
``<strong>`` around terms, MediaWiki edit links, tables of contents and reference lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

CONTENT_FILE = Path(__file__).with_name("articles.yaml")
ENCYCLOPEDIA_NAME = "Open Radiograph Encyclopaedia (devide fixture)"
WIKI_NAME = "Fixturepedia (devide fixture)"
LICENCE_URL = "https://creativecommons.org/publicdomain/zero/1.0/"


@dataclass(frozen=True)
class EncyclopediaArticle:
    slug: str
    title: str
    intro: str
    epidemiology: str
    radiograph: tuple[str, ...]
    differential: str
    ct: str | None = None
    behaviour: str | None = None
    layout: str = "default"
    radiograph_heading: str = "Plain radiograph"
    old_slug: str | None = None
    search_only: bool = False
    search_page_2: bool = False
    not_an_entity: bool = False


@dataclass(frozen=True)
class WikiArticle:
    title: str
    markup: str
    intro: str
    symptoms: str
    imaging_path: tuple[str, ...]
    imaging: tuple[str, ...]
    ct: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class IndexTrap:
    title: str
    href: str | None = None
    offsite: str | None = None


@dataclass(frozen=True)
class FixtureContent:
    licence: str
    encyclopedia: tuple[EncyclopediaArticle, ...]
    mediawiki: tuple[WikiArticle, ...]
    index_traps: tuple[IndexTrap, ...] = field(default_factory=tuple)

    def article(self, slug: str) -> EncyclopediaArticle | None:
        return next((a for a in self.encyclopedia if a.slug == slug), None)

    def wiki_page(self, title: str) -> WikiArticle | None:
        key = title.replace("_", " ").strip().casefold()
        return next((p for p in self.mediawiki if p.title.casefold() == key), None)


def _tuples(data: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}


@lru_cache(maxsize=1)
def load_content(path: Path = CONTENT_FILE) -> FixtureContent:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return FixtureContent(
        licence=data["licence"],
        encyclopedia=tuple(EncyclopediaArticle(**_tuples(a)) for a in data["encyclopedia"]),
        mediawiki=tuple(WikiArticle(**_tuples(p)) for p in data["mediawiki"]),
        index_traps=tuple(IndexTrap(**t) for t in data.get("index_traps", [])),
    )


def expected_sentences(content: FixtureContent | None = None) -> dict[str, dict[str, list[str]]]:
    """The oracle: {"encyclopedia"|"mediawiki": {article title: [sentences a correct crawl extracts]}}.

    Malformed pages and articles about no vocabulary entity contribute nothing.
    """
    content = content or load_content()
    encyclopedia = {a.title: list(a.radiograph) for a in content.encyclopedia
                    if a.behaviour != "malformed" and not a.not_an_entity}
    mediawiki = {p.title: list(p.imaging) for p in content.mediawiki}
    return {"encyclopedia": encyclopedia, "mediawiki": mediawiki}


# ---------------------------------------------------------------------------------------------- HTML helpers


def page(title: str, body: str, site: str) -> str:
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)} - "
            f"{escape(site)}</title></head><body>{body}</body></html>")


def licence_footer(content: FixtureContent) -> str:
    return (f'<footer id="footer"><p id="footer-info-copyright">Text is available under the '
            f'<a rel="license" href="{LICENCE_URL}">{escape(content.licence)}</a>.</p></footer>')


def _bold_title(intro: str, title: str, tag: str) -> str:
    """The intro with its leading title in bold, as articles open ("**Pneumothorax** is ...")."""
    if intro.casefold().startswith(title.casefold()):
        return f"<{tag}>{escape(intro[:len(title)])}</{tag}>{escape(intro[len(title):])}"
    return escape(intro)


def _sentences_html(sentences: tuple[str, ...], as_list: bool) -> str:
    """Sentences as a list or one paragraph, with a citation ``<sup>`` and a literal ``[3]`` marker added."""
    marked = []
    for i, sentence in enumerate(sentences):
        text = escape(sentence)
        if i == 0:
            text += "<sup>2</sup>"
        elif i == 1:
            text = text[:-1] + " [3]." if text.endswith(".") else text + " [3]"
        marked.append(text)
    if as_list:
        return "<ul>" + "".join(f"<li>{s}</li>" for s in marked) + "</ul>"
    return "<p>" + " ".join(marked) + "</p>"


# ---------------------------------------------------------------------------------------------- encyclopedia


def encyclopedia_article_html(article: EncyclopediaArticle, content: FixtureContent, position: int) -> str:
    """An article in the Radiopaedia-like structure: header block, then a flat run of headings and blocks."""
    if article.behaviour == "malformed":
        return _malformed_html(article)
    top, sub = ("h2", "h3") if article.layout == "h2" else ("h4", "h5")
    body_class = "user-generated-content" if article.layout == "no_body_class" else "body user-generated-content"
    as_list = position % 3 != 1
    features = _sentences_html(article.radiograph, as_list)
    parts = [
        f"<p>{_bold_title(article.intro, article.title, 'strong')}</p>",
        f"<{top}>Epidemiology</{top}><p>{escape(article.epidemiology)}</p>",
        f"<{top}>\u200bRadiographic features <sup>1</sup></{top}>",
    ]
    if article.layout == "no_modality":
        parts.append(features)
    else:
        parts.append(f"<{sub}>{escape(article.radiograph_heading)}</{sub}>{features}")
        if article.ct:
            parts.append(f"<{sub}>CT</{sub}><p>{escape(article.ct)}</p>")
    parts.append(f"<{top}>Differential diagnosis</{top}><p>{escape(article.differential)}</p>")
    header = (
        f'<div id="article-header"><h1 class="header-title">{escape(article.title)}</h1>'
        f'<div class="row"><div class="col-sm-3"><strong>rID:</strong></div>'
        f'<div class="col-sm-8">{90000 + position}</div></div>'
        f'<div class="meta-item meta-item-systems">Systems: <a href="/articles/section/chest">Chest</a></div>'
        f'<div class="authors">Written by <a href="/users/fixture-author">Fixture Author</a></div></div>'
    )
    body = (f'<div id="main">{header}<div class="{body_class}">{"".join(parts)}</div>'
            f'<p class="loading">Loading images...</p></div>{licence_footer(content)}')
    return page(article.title, body, ENCYCLOPEDIA_NAME)


def _malformed_html(article: EncyclopediaArticle) -> str:
    """Broken markup: an unterminated attribute swallows the body container, then the document just stops."""
    return (f'<html><head><title>{escape(article.title)}</title></head><body><div id="main">'
            f'<h1 class="header-title">{escape(article.title)}</h1>'
            f'<div class="body user-generated-content<p>{escape(article.intro)}<h4>Radiographic features'
            f'<h5>Plain radiograph</h4><ul><li>{escape(article.radiograph[0])}')


def index_entries(content: FixtureContent, offsite_base: str) -> list[tuple[str, str]]:
    """(title, href) for the A-Z index: listed articles (old slug for moved ones) and the trap links."""
    entries = []
    for article in content.encyclopedia:
        if article.search_only:
            continue
        entries.append((article.title, f"/articles/{article.old_slug or article.slug}"))
    for trap in content.index_traps:
        entries.append((trap.title, trap.href if trap.href else offsite_base.rstrip("/") + (trap.offsite or "/")))
    return sorted(entries, key=lambda entry: entry[0].casefold())


def listing_html(title: str, entries: list[tuple[str, str]], next_href: str | None, list_class: str) -> str:
    items = "".join(f'<li><a class="search-result-title" href="{escape(href)}">{escape(text)}</a></li>'
                    for text, href in entries)
    pager = f'<div class="pagination"><a class="next_page" rel="next" href="{escape(next_href)}">Next</a></div>' \
        if next_href else '<div class="pagination"><span class="next_page disabled">Next</span></div>'
    body = f'<div id="main"><h1>{escape(title)}</h1><ul class="{list_class}">{items}</ul>{pager}</div>'
    return page(title, body, ENCYCLOPEDIA_NAME)


def search_results(content: FixtureContent, query: str) -> list[tuple[str, str]]:
    """Articles whose title shares a word with ``query``; the exact title match is ranked last (a search
    engine that buries the best hit, so a crawler must follow the pagination)."""
    words = {w for w in query.casefold().split() if len(w) > 2}
    hits = []
    for article in content.encyclopedia:
        title_words = set(article.title.casefold().split())
        if words & title_words:
            href = f"/articles/{article.slug}" + ("?lang=gb" if article.behaviour == "second_url" else "")
            exact = article.title.casefold() == query.strip().casefold()
            hits.append((exact and article.search_page_2, article.title.casefold(), article.title, href))
    return [(title, href) for _, _, title, href in sorted(hits)]


# ---------------------------------------------------------------------------------------------- MediaWiki


def wiki_href(title: str) -> str:
    return "/wiki/" + quote(title.replace(" ", "_"))


def _wiki_heading(level: int, text: str, markup: str, section: int, title: str) -> str:
    anchor = escape(text.replace(" ", "_"))
    edit = (f'<span class="mw-editsection"><span class="mw-editsection-bracket">[</span><a href="/w/index.php?'
            f'title={quote(title)}&amp;action=edit&amp;section={section}">edit</a>'
            f'<span class="mw-editsection-bracket">]</span></span>')
    if markup == "new":
        return f'<div class="mw-heading mw-heading{level}"><h{level} id="{anchor}">{escape(text)}</h{level}>{edit}</div>'
    return f'<h{level}><span class="mw-headline" id="{anchor}">{escape(text)}</span>{edit}</h{level}>'


def _other_modality_heading(text: str) -> str:
    first_words = text.casefold()
    for word, heading in (("ultrasound", "Ultrasound"), ("echocardiography", "Echocardiography"),
                          ("barium", "Fluoroscopy")):
        if word in first_words.split(".")[0]:
            return heading
    return "Computed tomography"


def wiki_parser_output(article: WikiArticle) -> str:
    """The ``div.mw-parser-output`` of a page (also what the API's action=parse returns)."""
    h = lambda level, text, n: _wiki_heading(level, text, article.markup, n, article.title)
    cite = '<sup id="cite_ref-1" class="reference"><a href="#cite_note-1">[1]</a></sup>'
    needed = ('<sup class="noprint Inline-Template Template-Fact">[<i><a href="/wiki/Wikipedia:Citation_needed">'
              'citation needed</a></i>]</sup>')
    imaging = [escape(s) for s in article.imaging]
    imaging[0] += cite
    if len(imaging) > 1:
        imaging[-1] = imaging[-1] + needed
    depth = len(article.imaging_path)
    parts = [f"<p>{_bold_title(article.intro, article.title, 'b')}{cite}</p>",
             ('<div id="toc" class="toc"><h2 id="mw-toc-heading">Contents</h2><ul><li>Signs and symptoms</li>'
             '<li>Diagnosis</li></ul></div>'),
             h(2, "Signs and symptoms", 1), f"<p>{escape(article.symptoms)}</p>"]
    for level, heading in enumerate(article.imaging_path, start=2):
        parts.append(h(level, heading, level))
    parts.append("<p>" + " ".join(imaging) + "</p>")
    parts.append(h(depth + 2, _other_modality_heading(article.ct), 9) + f"<p>{escape(article.ct)}</p>")
    parts.append(h(2, "References", 10) + '<div class="reflist"><ol class="references"><li id="cite_note-1">'
                 "Fixture reference written for devide tests.</li></ol></div>")
    return f'<div class="mw-content-ltr mw-parser-output" lang="en" dir="ltr">{"".join(parts)}</div>'


def wiki_article_html(article: WikiArticle, content: FixtureContent) -> str:
    body = (f'<h1 id="firstHeading" class="firstHeading"><span class="mw-page-title-main">{escape(article.title)}'
            f'</span></h1><div id="bodyContent"><div id="mw-content-text" class="mw-body-content">'
            f"{wiki_parser_output(article)}</div></div>{licence_footer(content)}")
    return page(article.title, body, WIKI_NAME)


def wiki_search_html(query: str, hits: list[WikiArticle]) -> str:
    items = "".join(f'<li class="mw-search-result"><div class="mw-search-result-heading"><a href="'
                    f'{wiki_href(p.title)}" title="{escape(p.title)}">{escape(p.title)}</a></div></li>' for p in hits)
    body = (f'<h1 id="firstHeading">Search results</h1><div id="mw-content-text"><p class="mw-search-createlink">'
            f'Results for {escape(query)}</p><ul class="mw-search-results">{items}</ul></div>')
    return page("Search results", body, WIKI_NAME)
