"""The ``devide`` command line.

Subcommands are plugins registered under the ``devide.commands`` entry-point group (see pyproject.toml), so
the library never imports ``crawlers``, ``knowledge`` or ``pipelines``. An entry point resolves either to a
:class:`~devide.stage.Stage` (wrapped into a CLI with ``--config FILE``, one flag per config field and
``--set key=value`` overrides) or to a :class:`Command` with its own arguments.

Only the chosen subcommand's module is imported, so ``devide --help`` stays fast. Bad configs exit 2 with a
one-line message and no traceback.
"""

from __future__ import annotations

import argparse
import enum
import sys
import types
import typing
from importlib import import_module, metadata
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

from devide.config import ConfigError, load_config, parse_override
from devide.locking import LockHeldError
from devide.log import setup_logging
from devide.stage import Stage, StageError, execute_stage

ENTRY_POINT_GROUP = "devide.commands"
EXIT_BAD_INPUT = 2
# One-line descriptions shown by `devide --help` without importing every stage.
DESCRIPTIONS = {
    "phantom": "generate the phantom radiograph corpus (embedded default data) in the real datasets' layouts",
    "crawl": "collect radiographic descriptions from the web with Scrapy (polite by default)",
    "harmonize": "harmonise descriptions, definitions and report sentences into a knowledge base with an LLM",
    "knowledge": "inspect a knowledge base (e.g. `devide knowledge show pneumothorax`)",
    "prepare-data": "build the image-report-label dataset from a MIMIC-CXR-JPG style root, rejecting bad files",
    "train": "pretrain the DeViDe model with Accelerate (use `accelerate launch -m devide train` for many GPUs)",
    "evaluate": "zero-shot evaluation on external datasets, with grounding and subgroup metrics",
    "push": "push a trained model with its model card to the Hugging Face Hub (or --dry-run into a folder)",
    "finetune": "fine-tune the image tower for classification or segmentation with 1/10/100 % of the labels",
    "report": "gather a pipeline's zero-shot and fine-tuning results into one report",
    "run": "run a pipeline YAML (e.g. pipelines/demo.yaml), skipping stages whose inputs and config are unchanged",
}


@runtime_checkable
class Command(Protocol):
    """A subcommand that defines its own arguments."""

    name: str
    help: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def main(self, args: argparse.Namespace) -> int: ...


class NotBuiltError(LookupError):
    """The subcommand is declared but its stage has not been built yet."""


# ---------------------------------------------------------------------------------------------- registry


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def command_names() -> list[str]:
    return sorted(set(DESCRIPTIONS) | set(_entry_points()))


def load_command(name: str) -> Stage | Command:
    """Import the plugin behind ``name``; :class:`NotBuiltError` if its module does not exist yet."""
    entry = _entry_points().get(name)
    if entry is None:
        raise NotBuiltError(name)
    module_name = entry.value.split(":")[0]
    try:
        module = import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only the plugin's own module (or its package) missing means "not built"; anything else is a bug.
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise NotBuiltError(name) from None
        raise
    return getattr(module, entry.value.split(":")[1])


# ---------------------------------------------------------------------------------------------- stage CLI


def _unwrap_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _flag_for(name: str, annotation: Any) -> dict[str, Any] | None:
    """argparse keyword arguments for a config field, or None when it is only settable via --set."""
    kind = _unwrap_optional(annotation)
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):  # e.g. Path | bool: pass the text, pydantic decides
        return {"default": argparse.SUPPRESS, "metavar": name.upper()}
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction, "default": argparse.SUPPRESS}
    if origin in (list, tuple):
        return {"nargs": "+", "default": argparse.SUPPRESS, "metavar": name.upper()}
    if origin is typing.Literal:
        return {"choices": [str(c) for c in typing.get_args(kind)], "default": argparse.SUPPRESS}
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return {"choices": [str(m.value) for m in kind], "default": argparse.SUPPRESS}
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return None
    if kind in (str, int, float, Path) or isinstance(kind, type):
        return {"default": argparse.SUPPRESS, "metavar": name.upper()}
    return None


def default_text(info: Any) -> str:
    """`` (default: X)`` for a field's help: the value a default factory makes, nothing for a required field, a
    None default, or a description that already says what the default is."""
    if info.is_required() or "default" in (info.description or "").lower():
        return ""
    value = info.get_default(call_default_factory=True)
    if value is None:
        return ""
    shown = value.value if isinstance(value, enum.Enum) else str(value) if isinstance(value, Path) else repr(value)
    return f" (default: {shown})"


def add_stage_arguments(parser: argparse.ArgumentParser, stage: Stage) -> None:
    parser.add_argument("--config", type=Path, help="YAML file with the stage config (flags override it)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, dotted for nested keys (repeatable)")
    parser.add_argument("--force", action="store_true", help="rerun even if the artifact is up to date")
    group = parser.add_argument_group("config keys")
    for name, info in stage.config_cls.model_fields.items():
        kwargs = _flag_for(name, info.annotation)
        if kwargs is None:
            continue
        doc = f"{(info.description or '').strip()}{default_text(info)}".strip().replace("%", "%%")
        group.add_argument(f"--{name.replace('_', '-')}", dest=f"cfg__{name}", help=doc or None, **kwargs)


def stage_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key.startswith("cfg__"):
            overrides[key[5:]] = value
    for text in args.overrides:
        key, value = parse_override(text)
        overrides[key] = value
    return overrides


def run_stage_command(stage: Stage, args: argparse.Namespace) -> int:
    cfg = load_config(stage.config_cls, args.config, stage_overrides(args))
    result = execute_stage(stage, cfg, force=args.force, quiet=args.quiet)
    print(f"{stage.name}: {result.status} -> {result.out}")
    return 0


# ---------------------------------------------------------------------------------------------- main


def build_parser(selected: str | None = None, plugin: Stage | Command | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="devide",
        description="Knowledge-augmented vision-language pretraining for chest radiographs (DeViDe).",
        epilog="Run `devide COMMAND --help` for a command's options. Stages write an artifact folder with "
               "config.resolved.yaml, manifest.json and stage.log.",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings and errors only")
    parser.add_argument("--verbose", action="store_true", help="debug logging on the console")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in command_names():
        help_text = DESCRIPTIONS.get(name, "")
        child = sub.add_parser(name, help=help_text.replace("%", "%%"), description=help_text)
        child.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if name != selected or plugin is None:
            continue
        if isinstance(plugin, Stage):
            add_stage_arguments(child, plugin)
        else:
            plugin.add_arguments(child)
    return parser


def _selected_command(argv: list[str]) -> str | None:
    """The subcommand is the first argument that is not a top-level flag."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = _selected_command(argv)
    plugin: Stage | Command | None = None
    if selected in command_names():
        try:
            plugin = load_command(selected)
        except NotBuiltError:
            print(f"devide {selected}: this stage is not built yet (see the open issues)", file=sys.stderr)
            return EXIT_BAD_INPUT
    parser = build_parser(selected, plugin)
    args = parser.parse_args(argv)
    args.quiet = getattr(args, "quiet", False)
    setup_logging(quiet=args.quiet, verbose=args.verbose)
    if plugin is None:
        parser.print_help()
        return EXIT_BAD_INPUT if args.command is None else 0
    try:
        if isinstance(plugin, Stage):
            return run_stage_command(plugin, args)
        return int(plugin.main(args) or 0)
    except (ConfigError, StageError, LockHeldError, FileNotFoundError) as exc:
        print(f"devide {selected}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"devide {selected}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
