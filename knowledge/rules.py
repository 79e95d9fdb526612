"""The deterministic ``rules`` backend: aspect tagging by keyword evidence, no LLM.

Each source sentence is normalised (whitespace, list markers, a capital first letter, a final full stop) and
tagged with the aspect whose keywords it matches most; ties follow the order of :data:`ASPECT_KEYWORDS`. A
definition sentence with no other evidence is a ``definition``; any other sentence without evidence is tagged
``density`` (radiographic descriptions are, first of all, about how dense something looks).
"""

from __future__ import annotations

import re

from knowledge.labeler import split_sentences

ASPECT_KEYWORDS: dict[str, tuple[str, ...]] = {
    "definition": ("is a", "is an", "refers to", "defined as", "is the", "are a", "describes", "term for"),
    "location": ("left", "right", "upper", "lower", "lobe", "apex", "apical", "apices", "base", "basal",
                 "bases", "hilar", "hilum", "perihilar", "costophrenic", "retrocardiac", "mediastin", "zone",
                 "subpleural", "lateral", "medial", "chest wall", "diaphragm", "lingula", "paratracheal",
                 "above", "below", "beneath", "along", "over the", "projects", "located"),
    "shape": ("round", "oval", "linear", "wedge", "band", "plate", "lobulated", "tubular", "crescent",
              "meniscus", "triangular", "spherical", "shape", "curvilinear", "elongated", "thin line", "streak"),
    "density": ("opacity", "opacities", "opaque", "dense", "density", "lucen", "hyperlucent", "radiolucent",
                "homogeneous", "opacification", "whiter", "darker", "calcif", "attenuat", "air-filled",
                "gas", "absent lung markings", "increased", "decreased"),
    "border": ("margin", "border", "edge", "well-defined", "well defined", "ill-defined", "ill defined",
               "sharp", "indistinct", "silhouette", "spiculated", "smooth", "interface", "outline",
               "pleural line", "wall", "contour"),
    "texture": ("reticular", "reticulonodular", "ground-glass", "ground glass", "honeycomb", "air bronchogram",
                "mottled", "granular", "cystic", "texture", "pattern", "bubbly", "septal lines", "kerley",
                "cuffing", "tram"),
    "distribution": ("diffuse", "focal", "multifocal", "bilateral", "unilateral", "segmental", "lobar",
                     "symmetric", "scattered", "patchy", "widespread", "dependent", "peripheral", "central",
                     "bat-wing", "batwing", "multiple", "solitary", "distribution", "both lungs"),
    "associated_signs": ("shift", "displace", "volume loss", "associated", "accompan", "elevation", "elevated",
                         "blunting", "air-fluid", "deviation", "with ", "sign", "cardiomegaly", "effusion",
                         "collapse", "flattened", "widened", "tension"),
}
_FALLBACK = "density"


def aspect_scores(sentence: str) -> dict[str, int]:
    lowered = f" {sentence.lower()} "
    return {aspect: sum(lowered.count(k) for k in keywords) for aspect, keywords in ASPECT_KEYWORDS.items()}


def tag_aspect(sentence: str, source: str = "description") -> str:
    """The best-supported aspect of ``sentence``; see the module docstring for the tie and fallback rules."""
    scores = aspect_scores(sentence)
    if source != "definition":
        scores["definition"] = 0  # only vocabulary definitions are definitions
    best = max(scores, key=lambda a: scores[a])  # first in dict order among ties
    if scores[best] == 0:
        return "definition" if source == "definition" else _FALLBACK
    return best


def normalize_sentence(text: str) -> str:
    """One clean sentence: collapsed whitespace, no list marker, capital first letter, final full stop."""
    text = re.sub(r"^\s*(?:\d{1,2}[.)]|[-*•])\s+", "", " ".join(text.split()))
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def rules_sentences(text: str, source: str) -> list[tuple[str, str]]:
    """(aspect, sentence) pairs for every sentence of ``text``."""
    out = []
    for sentence in split_sentences(text):
        clean = normalize_sentence(sentence)
        if clean:
            out.append((tag_aspect(clean, source), clean))
    return out
