"""Text cleaning, sentence splitting, hashing and the section rules, on hand-written inputs."""

from __future__ import annotations

import hashlib

from crawlers.entities import EntityTerms, TermIndex
from crawlers.sections import ENCYCLOPEDIA_RULE, MEDIAWIKI_RULE, parse_html, walk_blocks
from crawlers.text import clean_text, dedupe_key, is_boilerplate, normalise_term, sentence_id, split_sentences


def test_clean_text_removes_markers_and_invisible_characters():
    raw = "Blunting\u200b of the angle [1] is seen [2\u20134],  e.g. on\u00ad erect films [citation needed] ."
    assert clean_text(raw) == "Blunting of the angle is seen, e.g. on erect films."
    assert clean_text("\ufb01ssure  ( left )") == "fissure (left)"  # NFKC ligature, spaces inside brackets


def test_split_sentences_keeps_abbreviations_and_decimals():
    text = "The ratio exceeds 0.5 on a PA film, cf. Fig. 2. Approx. 200 mL is needed. Dr. A. Smith agreed! Bullet"
    assert split_sentences(text) == [
        "The ratio exceeds 0.5 on a PA film, cf. Fig. 2.",
        "Approx. 200 mL is needed.",
        "Dr. A. Smith agreed!",
        "Bullet",
    ]
    assert split_sentences("The lesion measures 3 cm. It is round.") == ["The lesion measures 3 cm.", "It is round."]


def test_sentence_id_is_sha256_of_entity_and_normalised_sentence():
    expected = hashlib.sha256(b"pneumothorax\na thin pleural line is seen").hexdigest()
    assert sentence_id("pneumothorax", "A thin pleural line is seen.") == expected
    assert sentence_id("pneumothorax", "a  thin pleural line, is seen") == expected
    assert dedupe_key("A, B.") == "a b"


def test_boilerplate_and_term_normalisation():
    assert is_boilerplate("Text is available under the CC0 licence.")
    assert is_boilerplate("Loading images...")
    assert not is_boilerplate("See-saw motion of the diaphragm is seen.")
    assert normalise_term("Pulmonary oedema") == normalise_term("pulmonary edema")
    assert normalise_term("Hernia (medicine)") == "hernia"


def test_term_index_prefers_names_and_matches_whole_titles():
    index = TermIndex([EntityTerms(id="a", name="Effusion", synonyms=("fluid",)),
                       EntityTerms(id="b", name="Fluid", synonyms=("effusion",))])
    assert index.match("effusion") == "a" and index.match("FLUID") == "b"
    assert index.match("Effusion in pregnancy") is None


ENCYCLOPEDIA_HTML = """<html><body><div class="body user-generated-content">
<p><strong>Invented sign</strong> is a made-up finding.</p>
<h4>Epidemiology</h4><p>Not extracted.</p>
<h4>\u200bRadiographic features <sup>1</sup></h4>
<p>General line under the section.</p>
<h5>Plain radiograph</h5><ul><li>First bullet<sup>2</sup> here.<ul><li>Nested bullet.</li></ul></li></ul>
<h6>Lateral view</h6><p>Deeper detail.</p>
<h5>CT</h5><p>Not a radiograph.</p>
<h4>Differential diagnosis</h4><p>Not extracted either.</p></div></body></html>"""


def test_walk_blocks_paths_and_encyclopedia_rule():
    container = parse_html(ENCYCLOPEDIA_HTML).cssselect("div.user-generated-content")[0]
    blocks = walk_blocks(container)
    assert blocks[0].path == () and blocks[1].path == ("Epidemiology",)
    chosen = ENCYCLOPEDIA_RULE.select(blocks)
    assert [(b.section, b.text) for b in chosen] == [
        ("Radiographic features > Plain radiograph", "First bullet here."),
        ("Radiographic features > Plain radiograph", "Nested bullet."),
        ("Radiographic features > Plain radiograph > Lateral view", "Deeper detail."),
    ]


def test_rule_without_modality_subsection_takes_the_section_minus_other_modalities():
    html = ENCYCLOPEDIA_HTML.replace("<h5>Plain radiograph</h5>", "").replace("<h6>Lateral view</h6>", "")
    chosen = ENCYCLOPEDIA_RULE.select(walk_blocks(parse_html(html).cssselect("div.user-generated-content")[0]))
    assert [b.text for b in chosen] == ["General line under the section.", "First bullet here.", "Nested bullet.",
                                        "Deeper detail."]


def test_mediawiki_both_heading_markups():
    new = ('<div class="mw-parser-output"><div class="mw-heading mw-heading2"><h2 id="Diagnosis">Diagnosis</h2>'
           '<span class="mw-editsection">[<a>edit</a>]</span></div><div class="mw-heading mw-heading3">'
           '<h3 id="Imaging">Imaging</h3></div><p>Chest films show it.<sup class="reference">[1]</sup></p>'
           '<div class="mw-heading mw-heading4"><h4>Ultrasound</h4></div><p>Not this.</p></div>')
    old = ('<div class="mw-parser-output"><h2><span class="mw-headline">Diagnosis</span><span class="mw-editsection">'
           '[edit]</span></h2><h3><span class="mw-headline">Chest X-ray</span></h3><p>Chest films show it.</p>'
           '<div class="reflist"><ol><li>A reference.</li></ol></div></div>')
    for html, section in ((new, "Diagnosis > Imaging"), (old, "Diagnosis > Chest X-ray")):
        container = parse_html(f"<html><body>{html}</body></html>").cssselect(".mw-parser-output")[0]
        chosen = MEDIAWIKI_RULE.select(walk_blocks(container))
        assert [(b.section, b.text) for b in chosen] == [(section, "Chest films show it.")]
