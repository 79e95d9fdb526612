"""`devide push`: stage a model folder for the Hugging Face Hub, write its model card, and upload it.

What may leave the machine is decided by an allow-list, and everything else in the model folder is a
refusal that stops the push (fail closed): optimizer/scheduler/RNG state, pickles, training data, images,
oversized files and any file containing the token. The token comes only from the environment (``HF_TOKEN``)
or the Hugging Face login (``huggingface_hub.get_token``), and is never written anywhere.

The artifact folder holds ``upload/``, exactly the folder that is (or, with ``--dry-run OUT``, would be)
uploaded; ``from_pretrained(OUT/upload)`` loads it.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from devide.config import StageConfig
from devide.stage import Stage, StageContext, StageError, read_manifest

logger = logging.getLogger("devide.push")

UPLOAD_DIR = "upload"
# Files that may be pushed: weights (safetensors only), configs, processor and tokenizer files, the model's
# own remote code that save_pretrained copies beside it (top-level *.py, needed by
# AutoModel.from_pretrained(..., trust_remote_code=True)) and the knowledge snapshot.
ALLOWED = (
    "*.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json",
    "preprocessor_config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "vocab.txt", "added_tokens.json", "sentencepiece.bpe.model",
    "*.py", "knowledge.json",
)
# Why a file is refused, first match wins; anything neither allowed nor listed here is refused as "unexpected".
REFUSED = (
    ("optimizer*", "optimizer state"),
    ("scheduler*", "scheduler state"),
    ("random_states*", "RNG state"),
    ("scaler*", "gradient-scaler state"),
    ("*.pkl", "pickle"),
    ("*.pickle", "pickle"),
    ("*.bin", "pickle-based weights (push safetensors only)"),
    ("*.pt", "pickle-based torch file"),
    ("*.pth", "pickle-based torch file"),
    ("*.ckpt", "checkpoint"),
    ("*.arrow", "training data (Arrow)"),
    ("*.parquet", "training data"),
    ("*.csv*", "tabular data (possibly training labels)"),
    ("*.jsonl", "data records"),
    ("*.jpg", "image (possibly patient data)"),
    ("*.jpeg", "image (possibly patient data)"),
    ("*.png", "image (possibly patient data)"),
    ("*.dcm", "DICOM image"),
    ("*.dicom", "DICOM image"),
    ("*.txt", "text file (possibly a report)"),
)
CARD_TAGS = ["chest-x-ray", "radiology", "medical", "vision-language", "zero-shot", "devide"]
CITATION = """@article{luo2024devide,
  title   = {DeViDe: Faceted medical knowledge for improved medical vision-language pre-training},
  author  = {Luo, Haozhe and others},
  journal = {arXiv preprint arXiv:2404.03618},
  year    = {2024}
}"""


class PushConfig(StageConfig):
    model: Path = Field(description="model folder written by `devide train` (save_pretrained)")
    repo_id: str | None = Field(None, description="Hub repository, ORG/NAME (required unless --dry-run)")
    private: bool = Field(False, description="create the repository as private")
    revision: str | None = Field(None, description="branch to push to (created if missing)")
    dry_run: Path | bool | None = Field(
        None, description="write the folder that would be uploaded here (true: into `out`); upload nothing")
    eval_results: list[Path] = Field(default_factory=list, description="`devide evaluate` artifact folders")
    knowledge: Path | None = Field(None, description="`devide harmonize` artifact (knowledge snapshot, licences)")
    training: Path | None = Field(None, description="`devide train` artifact (provenance for the card)")
    license: str = Field("other", description="licence id for the card (weights trained on MIMIC-CXR: 'other')")
    max_file_mb: float = Field(4096, description="refuse any single file larger than this")
    endpoint: str | None = Field(None, description="Hub endpoint (default: huggingface.co or HF_ENDPOINT)")
    allow_report_knowledge: bool = Field(
        False, description="push knowledge sentences derived from the training reports (only for "
                           "non-credentialed data such as the phantom; never for MIMIC-CXR)")
    commit_message: str = "Upload DeViDe model with devide push"

    @model_validator(mode="after")
    def _check(self) -> PushConfig:
        if self.dry_run is False:
            object.__setattr__(self, "dry_run", None)
        if self.dry_run is None and not self.repo_id:
            raise ValueError("repo_id is required unless dry_run is set")
        if self.dry_run is True:
            if self.out is None:
                raise ValueError("dry_run: true needs 'out' (or give the dry-run folder as dry_run)")
            object.__setattr__(self, "dry_run", self.out)
        if self.repo_id is not None and self.repo_id.count("/") != 1:
            raise ValueError(f"repo_id must look like ORG/NAME, got {self.repo_id!r}")
        if self.out is None:  # the staged upload folder is the stage's artifact
            object.__setattr__(self, "out", self.dry_run or self.model.parent / "push")
        return self


@dataclass(frozen=True)
class Refusal:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path} ({self.reason})"


# ---------------------------------------------------------------------------------------------- selection


def hub_token() -> str | None:
    """The token from HF_TOKEN or the Hugging Face login; never from a config file."""
    from huggingface_hub import get_token

    return get_token()


def classify(rel_path: str, size: int, max_bytes: float) -> str | None:
    """None when the file may be pushed, else the reason it is refused."""
    name = rel_path.rsplit("/", 1)[-1]
    if size > max_bytes:
        return f"{size / 2**20:.0f} MiB exceeds the {max_bytes / 2**20:.0f} MiB limit"
    if "/" not in rel_path and any(fnmatch.fnmatch(name, pattern) for pattern in ALLOWED):
        return None
    for pattern, reason in REFUSED:
        if fnmatch.fnmatch(name.lower(), pattern):
            return reason
    return "unexpected file (not on the push allow-list)"


def contains_token(path: Path, token: str | None) -> bool:
    if not token:
        return False
    needle = token.encode()
    with path.open("rb") as handle:
        tail = b""
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            if needle in tail + chunk:
                return True
            tail = chunk[-len(needle):]
    return False


def select_files(model_dir: Path, token: str | None, max_file_mb: float) -> tuple[list[Path], list[Refusal]]:
    """Split the model folder into files to push and refusals (with reasons)."""
    if not (model_dir / "config.json").is_file():
        raise StageError(f"{model_dir} is not a model folder (no config.json); pass the save_pretrained folder")
    chosen, refused = [], []
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(model_dir).as_posix()
        reason = classify(rel, path.stat().st_size, max_file_mb * 2**20)
        if reason is None and contains_token(path, token):
            reason = "contains the Hugging Face token"
        if reason is None:
            chosen.append(path)
        else:
            refused.append(Refusal(rel, reason))
    if not any(p.suffix == ".safetensors" for p in chosen):
        refused.append(Refusal("model.safetensors", "no safetensors weights in the model folder"))
    return chosen, refused


def knowledge_rows(knowledge_dir: Path) -> list[Any]:
    """The rows of a harmonize artifact (entity, source, aspect, sentence, provenance)."""
    from knowledge.base import KnowledgeBase

    try:
        return KnowledgeBase.load(knowledge_dir).rows
    except FileNotFoundError as exc:
        raise StageError(str(exc)) from None


def report_derived_sentences(knowledge_dir: Path) -> set[str]:
    """Sentences of a harmonize artifact whose source is a training report."""
    return {row.sentence for row in knowledge_rows(knowledge_dir) if row.source == "report"}


def knowledge_provenance(knowledge_dir: Path) -> dict[str, Any]:
    """Crawled sites with their licences and page counts, and the LLM model ids and prompt versions, read from
    the per-sentence provenance the harmoniser records."""
    sites: dict[str, dict[str, Any]] = {}
    models, prompts = set(), set()
    for row in knowledge_rows(knowledge_dir):
        models.update([row.provenance["model"]] if row.provenance.get("model") else [])
        prompts.update([row.provenance["prompt"]] if row.provenance.get("prompt") else [])
        for source in row.provenance.get("sources", []):
            url = source.get("url")
            if not url:
                continue
            site = sites.setdefault(urlsplit(url).netloc, {"licences": set(), "pages": set()})
            site["licences"].add(source.get("licence") or "unknown")
            site["pages"].add(url)
    return {
        "sites": [{"site": name, "licences": sorted(v["licences"]), "pages": len(v["pages"])}
                  for name, v in sorted(sites.items())],
        "llm_models": sorted(models), "prompts": sorted(prompts),
    }


def check_knowledge_privacy(cfg: PushConfig) -> None:
    """Refuse a knowledge.json that holds sentences from the training reports (credentialed text, e.g.
    MIMIC-CXR) unless the user says the reports are not credentialed; fail closed when it cannot be checked."""
    path = cfg.model / "knowledge.json"
    if cfg.allow_report_knowledge or not path.is_file():
        return
    if cfg.knowledge is None:
        raise StageError("knowledge.json may hold sentences from training reports: pass --knowledge (the harmonize "
                         "artifact) so they can be checked, or --allow-report-knowledge for non-credentialed data")
    stored = {s for sentences in json.loads(path.read_text(encoding="utf-8")).values() for s in sentences}
    leaked = stored & report_derived_sentences(cfg.knowledge)
    if leaked:
        raise StageError(f"refusing to push: knowledge.json holds {len(leaked)} sentence(s) derived from training "
                         "reports (credentialed data); pass --allow-report-knowledge only for non-credentialed "
                         "reports such as the phantom's")


# ---------------------------------------------------------------------------------------------- card


def _load_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StageError(f"cannot read {path}: {exc}") from None


def collect_eval_results(folders: list[Path]) -> list[dict[str, Any]]:
    """Each evaluate artifact's results.json, with its folder name as a fallback dataset name."""
    results = []
    for folder in folders:
        path = folder / "results.json"
        if not path.is_file():
            raise StageError(f"{folder} has no results.json (is it a `devide evaluate` artifact?)")
        data = _load_json(path)
        data.setdefault("dataset", folder.name)
        results.append(data)
    return results


def _macro_auc(result: dict[str, Any], group: str = "all") -> tuple[float | None, float | None, float | None]:
    """(AUC, CI low, CI high) of a class group ("all", "seen", "unseen") from `devide evaluate`'s results.json."""
    macro = ((result.get("metrics") or {}).get("macro") or {}).get(group) or {}
    value, ci = macro.get("auc"), macro.get("auc_ci") or (None, None)
    return (float(value) if value is not None else None), ci[0], ci[1]


def _n_classes(result: dict[str, Any]) -> int:
    return len((result.get("metrics") or {}).get("classes") or [])


def eval_table(results: list[dict[str, Any]]) -> str:
    if not results:
        return "No evaluation results were attached to this push."
    lines = ["| dataset | split | images | macro AUC, all (95% CI) | seen | unseen | classes |",
             "|---|---|---|---|---|---|---|"]
    for result in results:
        cells = []
        for group in ("all", "seen", "unseen"):
            value, low, high = _macro_auc(result, group)
            ci = f" ({low:.3f}–{high:.3f})" if group == "all" and low is not None and high is not None else ""
            cells.append(f"{value:.3f}{ci}" if value is not None else "–")
        images = (result.get("counts") or {}).get("evaluated", "?")
        lines.append(f"| {result['dataset']} | {result.get('split', 'test')} | {images} | {' | '.join(cells)} | "
                     f"{_n_classes(result)} |")
    return "\n".join(lines)


def card_eval_results(results: list[dict[str, Any]]) -> list[Any]:
    from huggingface_hub import EvalResult

    entries = []
    for result in results:
        value, _, _ = _macro_auc(result)
        if value is None:
            continue
        entries.append(EvalResult(
            task_type="zero-shot-image-classification", task_name="Zero-shot chest radiograph classification",
            dataset_type=str(result.get("dataset_type", result["dataset"])), dataset_name=str(result["dataset"]),
            dataset_split=str(result.get("split", "test")), metric_type="roc_auc",
            metric_name="macro AUC", metric_value=round(float(value), 4),
        ))
    return entries


def provenance(cfg: PushConfig) -> dict[str, Any]:
    """Training-data provenance for the card, from the upstream artifacts' manifests and knowledge sources."""
    info: dict[str, Any] = {"pushed": datetime.now(UTC).isoformat(timespec="seconds")}
    if cfg.training is not None:
        manifest = read_manifest(cfg.training) or {}
        info["training_manifest"] = {k: manifest.get(k) for k in ("config_hash", "finished", "counts", "versions")}
        info["training_inputs"] = manifest.get("inputs", {})
    if cfg.knowledge is not None:
        manifest = read_manifest(cfg.knowledge) or {}
        info["knowledge_counts"] = manifest.get("counts", {})
        info["knowledge_date"] = manifest.get("finished")
        info.update(knowledge_provenance(cfg.knowledge))
    return info


def render_card(cfg: PushConfig, model_config: dict[str, Any], results: list[dict[str, Any]],
                info: dict[str, Any]) -> Any:
    from huggingface_hub import ModelCard, ModelCardData

    repo = cfg.repo_id or "ORG/NAME"
    towers = (model_config.get("vision_model_name_or_path"), model_config.get("text_model_name_or_path"))
    base_models = [m for m in towers if isinstance(m, str) and m.count("/") == 1 and not Path(m).exists()]
    data = ModelCardData(
        license=cfg.license, library_name="transformers", pipeline_tag="zero-shot-image-classification",
        tags=CARD_TAGS, base_model=base_models or None, model_name=repo.split("/")[-1],
        eval_results=card_eval_results(results) or None,
    )
    source_lines = "\n".join(
        f"- {s['site']}: {s['pages']} page(s); licence: {'; '.join(s['licences'])}" for s in info.get("sites", [])
    ) or "- (no crawl sources recorded)"
    llm = {"models": info.get("llm_models", []), "prompts": info.get("prompts", []),
           "harmonised": info.get("knowledge_date"),
           **{k: v for k, v in info.get("knowledge_counts", {}).items() if "llm" in k or "backend" in k}}
    entities = model_config.get("entities") or []
    content = CARD_TEMPLATE.format(
        repo=repo, entities=", ".join(entities[:60]) or "(see config.json)", n_entities=len(entities),
        table=eval_table(results), sources=source_lines,
        llm=json.dumps(llm),
        training=json.dumps(info.get("training_inputs", {}), indent=1)[:2000],
        config=json.dumps({k: v for k, v in model_config.items() if not isinstance(v, (dict, list))}, indent=1),
        citation=CITATION, pushed=info["pushed"],
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{content}")


CARD_TEMPLATE = """
# {repo}

A DeViDe-style knowledge-augmented vision-language model for chest radiographs, trained with
[devide](https://github.com/) (after Luo et al., arXiv 2404.03618). It scores findings zero-shot from their
names or free-text descriptions — including findings never named in its training reports — and returns
grounding maps that show where it looked.

**Not for clinical use.** This is a research model. It has not been validated for diagnosis, triage or any
clinical decision, and its outputs must not be used as such.

## Intended use

Research on zero-shot detection and grounding of chest radiograph findings, and as a pretrained image tower
for fine-tuning. Out of scope: clinical decision making, populations or imaging protocols unlike the training
data, lateral views unless trained on them.

## Usage

```python
from transformers import AutoImageProcessor, AutoModel
from PIL import Image

model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)
processor = AutoImageProcessor.from_pretrained("{repo}", trust_remote_code=True)
image = Image.new("L", (512, 512))  # replace with a frontal chest radiograph, opened with PIL
inputs = processor(images=[image], return_tensors="pt")
out = model.predict(inputs["pixel_values"], entities=["pneumothorax", "pleural_effusion"])
print(out.probs)  # [1, 2] probabilities; out.grounding holds the [1, 2, h, w] maps
```

## Entities ({n_entities})

{entities}

## Evaluation

{table}

AUCs are threshold-free; thresholded metrics and their protocols (validation-chosen, or the optimistic
test-tuned protocols of MedKLIP/MAVL and KAD) are in the attached `eval/` results.

## Training data provenance

Inputs of the training run (artifact fingerprints):

```json
{training}
```

Knowledge sources (descriptions crawled with robots.txt obeyed; licences as recorded per page):

{sources}

LLM harmonisation: {llm}

No training images or reports are included in this repository.

## Architecture and configuration

```json
{config}
```

## Limitations

Trained on the data listed above only; performance on other hospitals, devices and populations is unknown.
Knowledge text was harmonised by an LLM and may contain errors. Zero-shot scores are not calibrated
probabilities of disease.

## Citation

```bibtex
{citation}
```

_Card generated by `devide push` on {pushed}._
"""


# ---------------------------------------------------------------------------------------------- stage


def stage_upload_folder(cfg: PushConfig, target: Path, token: str | None) -> dict[str, Any]:
    """Copy the allowed files, the knowledge snapshot, eval results and the card into ``target``."""
    check_knowledge_privacy(cfg)
    chosen, refused = select_files(cfg.model, token, cfg.max_file_mb)
    if refused:
        shown = "; ".join(str(r) for r in refused[:8]) + (f"; +{len(refused) - 8} more" if len(refused) > 8 else "")
        raise StageError(f"refusing to push {cfg.model}: {shown}")
    target.mkdir(parents=True, exist_ok=True)
    for path in chosen:
        shutil.copy2(path, target / path.name)
    results = collect_eval_results(cfg.eval_results)
    if results:
        (target / "eval").mkdir(exist_ok=True)
        for folder, result in zip(cfg.eval_results, results, strict=True):
            (target / "eval" / f"{folder.name}.json").write_text(json.dumps(result, indent=2))
    info = provenance(cfg)
    card = render_card(cfg, _load_json(cfg.model / "config.json"), results, info)
    card.save(target / "README.md")
    staged = sorted(p for p in target.rglob("*") if p.is_file())
    leaking = [p.name for p in staged if contains_token(p, token)]
    if leaking:
        raise StageError(f"refusing to push: the token appears in {', '.join(leaking)}")
    return {"files": len(staged), "bytes": sum(p.stat().st_size for p in staged), "eval_results": len(results)}


def upload(cfg: PushConfig, folder: Path, token: str | None, api: Any = None) -> str:
    """create_repo + upload_folder through huggingface_hub; returns the commit URL."""
    from huggingface_hub import HfApi

    if not token:
        raise StageError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (never put it in a config)")
    api = api or HfApi(endpoint=cfg.endpoint, token=token)
    api.create_repo(cfg.repo_id, private=cfg.private, exist_ok=True)
    if cfg.revision:
        api.create_branch(cfg.repo_id, branch=cfg.revision, exist_ok=True)
    info = api.upload_folder(repo_id=cfg.repo_id, folder_path=folder, revision=cfg.revision,
                             commit_message=cfg.commit_message)
    return str(getattr(info, "commit_url", info))


def run_push(cfg: PushConfig, ctx: StageContext, api: Any = None) -> dict[str, Any]:
    token = hub_token()
    target = ctx.work_dir / UPLOAD_DIR
    counts = stage_upload_folder(cfg, target, token)
    if cfg.dry_run is not None:
        ctx.logger.info("dry run: %d files staged, nothing uploaded", counts["files"])
        return {**counts, "uploaded": False}
    url = upload(cfg, target, token, api)
    ctx.logger.info("pushed %s (%s)", cfg.repo_id, url)
    return {**counts, "uploaded": True, "commit": url}


STAGE = Stage(
    name="push",
    config_cls=PushConfig,
    run=run_push,
    help="push a trained model with its model card to the Hub (or --dry-run into a folder)",
    input_fields=("model", "eval_results", "knowledge", "training"),
    code=("devide.hub",),
)
