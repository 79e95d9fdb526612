"""Phantom chest radiographs: the embedded default data, written in the real datasets' layouts.

``devide phantom --out DIR --n-studies N --seed S [--size 512]`` (see ``docs/phantom.md``). The pieces are
usable directly: :func:`render_case` renders a :class:`Case` (optionally without some findings), and
:func:`load_spec` gives the findings' aspect specification (``findings.json``).
"""

from devide.data.phantom.case import Case, Finding
from devide.data.phantom.formats import mask_to_rle, rle_to_mask
from devide.data.phantom.render import Rendered, render_case
from devide.data.phantom.spec import load_spec
from devide.data.phantom.stage import STAGE, PhantomConfig

__all__ = ["STAGE", "Case", "Finding", "PhantomConfig", "Rendered", "load_spec", "mask_to_rle", "render_case",
           "rle_to_mask"]
