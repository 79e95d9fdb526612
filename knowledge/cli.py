"""``devide knowledge``: inspect the vocabulary and a knowledge base.

    devide knowledge show pneumothorax [--kb artifacts/demo/harmonize] [--provenance]
    devide knowledge list [--kb ...]            # entities with sentence counts per source
    devide knowledge vocab [--dataset chestxray14]   # the vocabulary (and a dataset's label mapping)
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from knowledge.base import KnowledgeBase
from knowledge.vocabulary import DATASETS, load_vocabulary

DEFAULT_KB = Path("artifacts/demo/harmonize")


def resolve_entity(name: str) -> str:
    """An entity id from an id, a name or a synonym ("Pneumothorax", "ptx", "pleural effusion")."""
    vocab = load_vocabulary()
    key = name.strip().lower().replace("-", "_")
    if key in vocab:
        return key
    spoken = name.strip().lower()
    for entity in vocab:
        if spoken in entity.terms:
            return entity.id
    close = [e.id for e in vocab if key in e.id or spoken in e.name.lower()]
    hint = f" (did you mean {', '.join(close[:4])}?)" if close else " (see `devide knowledge vocab`)"
    raise FileNotFoundError(f"unknown entity '{name}'{hint}")


class KnowledgeCommand:
    name = "knowledge"
    help = "inspect a knowledge base (e.g. `devide knowledge show pneumothorax`)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        show = sub.add_parser("show", help="an entity's sentences grouped by aspect")
        show.add_argument("entity", help="entity id, name or synonym (e.g. pneumothorax, 'pleural effusion')")
        show.add_argument("--provenance", action="store_true", help="print each sentence's sources and method")
        listing = sub.add_parser("list", help="entities of the knowledge base with sentence counts per source")
        for child in (show, listing):
            child.add_argument("--kb", type=Path, default=DEFAULT_KB,
                               help=f"harmonize artifact folder (default: {DEFAULT_KB})")
        vocab = sub.add_parser("vocab", help="the entity vocabulary (ids, names, categories)")
        vocab.add_argument("--dataset", choices=DATASETS, help="also print this dataset's label names per entity")

    def main(self, args: argparse.Namespace) -> int:
        if args.action == "vocab":
            return self._vocab(args.dataset)
        kb = KnowledgeBase.load(args.kb)
        if args.action == "list":
            return self._list(kb)
        return self._show(kb, resolve_entity(args.entity), args.provenance)

    @staticmethod
    def _show(kb: KnowledgeBase, entity: str, with_provenance: bool) -> int:
        grouped = kb.by_aspect(entity)
        if not grouped:
            raise FileNotFoundError(f"entity '{entity}' has no sentences in {kb.folder}")
        name = load_vocabulary().get(entity).name
        print(f"{name} ({entity}): {sum(len(v) for v in grouped.values())} sentences")
        for aspect, rows in grouped.items():
            print(f"\n  {aspect.replace('_', ' ')}")
            for row in rows:
                print(f"    - {row.sentence}  [{row.source}]")
                if with_provenance:
                    prov = row.provenance
                    where = ", ".join(s.get("url") or s.get("ref", "") for s in prov.get("sources", []))
                    model = f", model {prov['model']}" if prov.get("model") else ""
                    print(f"        {prov.get('method')} via {prov.get('backend')}{model}; from {where}")
        return 0

    @staticmethod
    def _list(kb: KnowledgeBase) -> int:
        counts = {e: Counter(r.source for r in kb.for_entity(e)) for e in kb.entities}
        print(f"{'entity':32} {'definition':>10} {'description':>11} {'report':>7}")
        for entity, c in counts.items():
            print(f"{entity:32} {c['definition']:>10} {c['description']:>11} {c['report']:>7}")
        return 0

    @staticmethod
    def _vocab(dataset: str | None) -> int:
        for entity in load_vocabulary():
            labels = f"  <- {', '.join(entity.mappings.get(dataset, []))}" if dataset else ""
            print(f"{entity.id:32} {entity.category:8} {entity.name}{labels}")
        return 0


COMMAND = KnowledgeCommand()
