"""`devide push`: the exact dry-run contents, every refusal, the card's metadata, the upload at the HfApi
boundary, and the token never written anywhere.

The upload is tested with the client replaced at the ``HfApi`` boundary (a recording fake passed to
``upload``): the Hub's commit protocol (pre-upload, LFS/Xet negotiation, NDJSON commits) is huggingface_hub's
own, tested by that project; what is ours is which calls we make, with which arguments and which folder.
"""

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import save_file

from devide import cli
from devide.config import ConfigError, load_config
from devide.hub import STAGE, PushConfig, select_files, upload
from devide.stage import StageError, execute_stage

TOKEN = "hf_TestTokenThatMustNeverLeak123"


@pytest.fixture(autouse=True)
def hf_token(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


@pytest.fixture
def model_dir(tmp_path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    save_file({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "devide", "entities": ["pneumothorax", "pleural_effusion"],
        "vision_model_name_or_path": "google/vit-base-patch16-224", "text_model_name_or_path": "/local/minilm",
        "hidden": 8}))
    (folder / "preprocessor_config.json").write_text("{}")
    (folder / "tokenizer.json").write_text("{}")
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    (folder / "knowledge.json").write_text(json.dumps({"pneumothorax": ["A visceral pleural line."]}))
    (folder / "modeling_devide.py").write_text("# remote code\n")
    return folder


@pytest.fixture
def eval_dir(tmp_path) -> Path:
    folder = tmp_path / "eval-chestxray14"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({
        "dataset": "chestxray14", "split": "test", "counts": {"evaluated": 42},
        "metrics": {
            "classes": [{"class": "Pneumothorax", "auc": 0.9, "auc_ci": [0.85, 0.94]}],
            "macro": {"all": {"auc": 0.8123, "auc_ci": [0.79, 0.83]}, "seen": {"auc": 0.85, "auc_ci": [0.8, 0.9]},
                      "unseen": {"auc": 0.7, "auc_ci": [0.6, 0.8]}},
        },
    }))
    return folder


def dry_run(model_dir: Path, out: Path, **extra) -> Path:
    extra.setdefault("allow_report_knowledge", True)  # fixture knowledge is synthetic; the guard has its own tests
    cfg = load_config(PushConfig, overrides={"model": str(model_dir), "dry_run": str(out), **extra})
    execute_stage(STAGE, cfg)
    return out / "upload"


def test_dry_run_folder_holds_exactly_the_allowed_files(model_dir, eval_dir, tmp_path):
    upload_dir = dry_run(model_dir, tmp_path / "dry", eval_results=[str(eval_dir)])
    names = sorted(p.relative_to(upload_dir).as_posix() for p in upload_dir.rglob("*") if p.is_file())
    assert names == sorted([
        "README.md", "config.json", "eval/eval-chestxray14.json", "knowledge.json", "model.safetensors",
        "modeling_devide.py", "preprocessor_config.json", "tokenizer.json", "vocab.txt",
    ])


@pytest.mark.parametrize("name, content, reason", [
    ("optimizer.bin", b"x", "optimizer state"),
    ("scheduler.bin", b"x", "scheduler state"),
    ("random_states_0.pkl", b"x", "RNG state"),
    ("pytorch_model.bin", b"x", "pickle-based weights"),
    ("data-00000-of-00001.arrow", b"x", "training data"),
    ("s50414267.txt", b" FINDINGS: no effusion.", "report"),
    ("cxr.jpg", b"\xff\xd8\xff", "image"),
    ("notes.docx", b"x", "unexpected file"),
    ("generation_config.json", TOKEN.encode(), "contains the Hugging Face token"),
])
def test_each_refusal_stops_the_push_with_its_reason(model_dir, tmp_path, name, content, reason):
    (model_dir / name).write_bytes(content)
    with pytest.raises(StageError) as info:
        dry_run(model_dir, tmp_path / "dry")
    assert name in str(info.value) and reason in str(info.value)
    assert TOKEN not in str(info.value)
    assert not (tmp_path / "dry").exists()


def test_oversized_and_missing_weights_are_refused(model_dir):
    _, refused = select_files(model_dir, None, max_file_mb=0.00001)
    assert any("exceeds" in r.reason for r in refused)
    (model_dir / "model.safetensors").unlink()
    _, refused = select_files(model_dir, None, max_file_mb=100)
    assert [r.reason for r in refused] == ["no safetensors weights in the model folder"]


def test_card_metadata_parses_and_carries_results(model_dir, eval_dir, tmp_path):
    upload_dir = dry_run(model_dir, tmp_path / "dry", eval_results=[str(eval_dir)], repo_id="org/devide-demo")
    card = ModelCard.load(upload_dir / "README.md")
    data = card.data
    assert data.pipeline_tag == "zero-shot-image-classification"
    assert data.base_model == ["google/vit-base-patch16-224"]  # the local text path is not a hub id
    assert data.eval_results[0].metric_value == pytest.approx(0.8123)
    assert data.eval_results[0].dataset_name == "chestxray14"
    assert "Not for clinical use" in card.text and "2404.03618" in card.text
    assert 'AutoModel.from_pretrained("org/devide-demo", trust_remote_code=True)' in card.text
    assert "| chestxray14 | test | 42 | 0.812 (0.790–0.830) | 0.850 | 0.700 | 1 |" in card.text


def test_token_never_written_anywhere(model_dir, eval_dir, tmp_path):
    out = tmp_path / "dry"
    dry_run(model_dir, out, eval_results=[str(eval_dir)], repo_id="org/name")
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


class RecordingHfApi:
    """Stands in for huggingface_hub.HfApi at the boundary; records calls and the uploaded files."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.uploaded: list[str] = []

    def create_repo(self, repo_id, private=None, exist_ok=False):
        self.calls.append(("create_repo", repo_id, private, exist_ok))

    def create_branch(self, repo_id, branch, exist_ok=False):
        self.calls.append(("create_branch", repo_id, branch, exist_ok))

    def upload_folder(self, repo_id, folder_path, revision=None, commit_message=None):
        self.calls.append(("upload_folder", repo_id, revision))
        self.uploaded = sorted(p.name for p in Path(folder_path).rglob("*") if p.is_file())
        return type("CommitInfo", (), {"commit_url": f"https://hub.test/{repo_id}/commit/abc"})()


def test_upload_calls_create_repo_branch_and_upload_folder(model_dir, tmp_path):
    upload_dir = dry_run(model_dir, tmp_path / "dry")
    cfg = load_config(PushConfig, overrides={"model": str(model_dir), "repo_id": "org/name",
                                             "private": True, "revision": "v1"})
    api = RecordingHfApi()
    url = upload(cfg, upload_dir, TOKEN, api)
    assert url == "https://hub.test/org/name/commit/abc"
    assert api.calls == [("create_repo", "org/name", True, True), ("create_branch", "org/name", "v1", True),
                         ("upload_folder", "org/name", "v1")]
    assert "optimizer.bin" not in api.uploaded and "model.safetensors" in api.uploaded


def test_upload_without_token_is_a_clear_error(model_dir, tmp_path):
    cfg = load_config(PushConfig, overrides={"model": str(model_dir), "repo_id": "org/name"})
    with pytest.raises(StageError, match="HF_TOKEN"):
        upload(cfg, tmp_path, None, RecordingHfApi())


def test_config_requires_repo_id_or_dry_run(model_dir):
    with pytest.raises(ConfigError, match="repo_id is required"):
        load_config(PushConfig, overrides={"model": str(model_dir)})
    with pytest.raises(ConfigError, match="ORG/NAME"):
        load_config(PushConfig, overrides={"model": str(model_dir), "repo_id": "no-slash"})


CRAWLED = {"model": "smollm2-135m-instruct", "prompt": "harmonize_v1@abc123", "sources": [
    {"url": "http://127.0.0.1:8000/articles/pneumothorax", "licence": "CC0-1.0"},
    {"url": "http://127.0.0.1:8000/articles/pneumothorax-2", "licence": "CC0-1.0"}]}


def harmonize_artifact(folder: Path, report_sentence: str) -> Path:
    from knowledge.base import write_knowledge_base

    folder.mkdir(parents=True)
    rows = [("definition", "definition", "Air in the pleural space.", {}),
            ("description", "location", "A visceral pleural line at the apex.", CRAWLED),
            ("report", "location", report_sentence, {})]
    write_knowledge_base(folder, [{"entity": "pneumothorax", "source": source, "aspect": aspect, "sentence": text,
                                   "provenance": json.dumps(prov), "hash": str(i)}
                                  for i, (source, aspect, text, prov) in enumerate(rows)])
    return folder


def test_card_lists_crawled_sites_licences_and_llm(model_dir, tmp_path):
    knowledge = harmonize_artifact(tmp_path / "kb", "Right apical pneumothorax.")
    model_knowledge(model_dir, "A visceral pleural line at the apex.")
    card = (dry_run(model_dir, tmp_path / "dry", knowledge=str(knowledge)) / "README.md").read_text()
    assert "- 127.0.0.1:8000: 2 page(s); licence: CC0-1.0" in card
    assert '"models": ["smollm2-135m-instruct"], "prompts": ["harmonize_v1@abc123"]' in card


def model_knowledge(model_dir: Path, *sentences: str) -> None:
    (model_dir / "knowledge.json").write_text(json.dumps({"pneumothorax": list(sentences)}))


def test_report_derived_knowledge_is_refused_unless_allowed(model_dir, tmp_path):
    """Sentences from (possibly credentialed) training reports never leave in knowledge.json by default."""
    leaked = harmonize_artifact(tmp_path / "kb-leak", "Large right pneumothorax.")
    model_knowledge(model_dir, "Air in the pleural space.", "Large right pneumothorax.")
    with pytest.raises(StageError, match="derived from training reports"):
        dry_run(model_dir, tmp_path / "d1", knowledge=str(leaked), allow_report_knowledge=False)
    with pytest.raises(StageError, match="--knowledge"):
        dry_run(model_dir, tmp_path / "d2", allow_report_knowledge=False)  # cannot be checked: fail closed
    assert (dry_run(model_dir, tmp_path / "d4", knowledge=str(leaked)) / "knowledge.json").is_file()
    clean = harmonize_artifact(tmp_path / "kb-clean", "Right apical pneumothorax.")
    model_knowledge(model_dir, "Air in the pleural space.", "A visceral pleural line at the apex.")
    assert (dry_run(model_dir, tmp_path / "d3", knowledge=str(clean), allow_report_knowledge=False)
            / "knowledge.json").is_file()


def test_cli_dry_run_and_refusal_exit_codes(model_dir, tmp_path, capsys):
    base = ["push", "--model", str(model_dir), "--allow-report-knowledge", "--dry-run"]
    assert cli.main([*base, str(tmp_path / "d1")]) == 0
    (model_dir / "optimizer.bin").write_bytes(b"x")
    assert cli.main([*base, str(tmp_path / "d2")]) == 2
    err = capsys.readouterr().err
    assert "optimizer.bin (optimizer state)" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_round_trip_from_the_dry_run_folder_reproduces_predictions(tmp_path):
    """A real (tiny) DeViDe model: save_pretrained -> push dry run -> the card's own usage snippet, run as
    written against the upload folder, and AutoModel(trust_remote_code) predictions equal the original's."""
    from transformers import AutoModel

    from devide.modeling import DevideConfig, DevideModel
    from tests.devide.modeling.test_model import KNOWLEDGE, SMALL

    torch.manual_seed(0)
    model = DevideModel(DevideConfig(**SMALL)).eval()
    model.set_knowledge(KNOWLEDGE)
    model.save_pretrained(tmp_path / "model")
    upload_dir = dry_run(tmp_path / "model", tmp_path / "dry", repo_id="org/devide-tiny")
    assert {"losses.py", "modeling_devide.py", "knowledge.json", "model.safetensors"} <= {
        p.name for p in upload_dir.iterdir()}

    card = ModelCard.load(upload_dir / "README.md").text
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0].replace("org/devide-tiny", str(upload_dir))
    namespace: dict = {}
    exec(compile(snippet, "model-card-usage", "exec"), namespace)  # the snippet as a user would paste it
    assert tuple(namespace["out"].probs.shape) == (1, 2)

    pixels = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    loaded = AutoModel.from_pretrained(upload_dir, trust_remote_code=True).eval()
    entities = ["pneumothorax", "pleural_effusion", "nodule"]
    with torch.no_grad():
        expected, got = model.predict(pixels, entities=entities), loaded.predict(pixels, entities=entities)
    torch.testing.assert_close(got.probs, expected.probs, rtol=0, atol=0)
    torch.testing.assert_close(got.grounding, expected.grounding, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- hardening (issue 19)


def artifact(folder: Path, stage: str, **inputs: Path) -> Path:
    """A complete artifact folder whose manifest names ``inputs`` with their real fingerprints."""
    from devide.stage import fingerprint_path

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({
        "stage": stage, "status": "complete", "output_hash": f"{stage}-{folder.name}",
        "inputs": {k: [{"path": str(v), "hash": fingerprint_path(v)}] for k, v in inputs.items()}}))
    return folder


def train_artifact(tmp_path: Path, model_dir: Path, knowledge: Path, dataset: Path | None = None) -> Path:
    """T/ with T/model (the fixture model moved in) and a manifest naming the knowledge it was trained with."""
    folder = tmp_path / "train"
    folder.mkdir()
    model_dir.rename(folder / "model")
    extra = {"dataset": dataset} if dataset is not None else {}
    return artifact(folder, "train", knowledge=knowledge, **extra)


def test_push_refuses_knowledge_other_than_the_one_trained_with(model_dir, tmp_path):
    """Issue 19.1: --knowledge R while the train manifest names H (with reports) staged H's report sentences."""
    trained_with = harmonize_artifact(tmp_path / "H", "Large right pleural effusion.")
    other = harmonize_artifact(tmp_path / "R", "Right apical pneumothorax.")
    model_knowledge(model_dir, "Air in the pleural space.", "Large right pleural effusion.")
    train = train_artifact(tmp_path, model_dir, trained_with)
    base = {"model": str(train / "model"), "training": str(train), "allow_report_knowledge": False}
    with pytest.raises(StageError, match="not the knowledge the model was trained with"):
        dry_run(train / "model", tmp_path / "d1", **{**base, "knowledge": str(other)})
    # The default is the knowledge the train manifest names (verified by hash): its report sentence is found.
    with pytest.raises(StageError, match="1 sentence\\(s\\) derived from training reports"):
        dry_run(train / "model", tmp_path / "d2", **base)
    with pytest.raises(StageError, match="derived from training reports"):
        dry_run(train / "model", tmp_path / "d3", **{**base, "training": None})  # found from T/model alone
    # H changed since training: its hash no longer matches, so nothing verifiable is left: fail closed.
    (trained_with / "knowledge.json").write_text("{}")
    with pytest.raises(StageError, match="pass --knowledge"):
        dry_run(train / "model", tmp_path / "d4", **base)


def test_push_without_a_train_manifest_checks_the_sentences_themselves(model_dir, tmp_path):
    """A model folder alone, with an artifact that lacks its report sentences: the content check refuses."""
    other = harmonize_artifact(tmp_path / "R", "Right apical pneumothorax.")
    model_knowledge(model_dir, "Air in the pleural space.", "Large right pleural effusion.")
    with pytest.raises(StageError, match="1 sentence\\(s\\) that are not in R"):
        dry_run(model_dir, tmp_path / "d", knowledge=str(other), allow_report_knowledge=False)


def test_staged_files_hold_no_absolute_path_of_this_machine(model_dir, eval_dir, tmp_path, monkeypatch):
    """Issue 19.3: the card's provenance and eval/*.json held absolute dataset, knowledge and model paths."""
    monkeypatch.chdir(tmp_path)
    knowledge = harmonize_artifact(tmp_path / "artifacts" / "harmonize", "Right apical pneumothorax.")
    dataset = artifact(tmp_path / "artifacts" / "prepare-data", "prepare-data", root=eval_dir)
    model_knowledge(model_dir, "A visceral pleural line at the apex.")
    train = train_artifact(tmp_path / "artifacts", model_dir, knowledge, dataset)
    result = json.loads((eval_dir / "results.json").read_text())
    (eval_dir / "results.json").write_text(json.dumps({
        **result, "root": str(tmp_path / "artifacts" / "phantom" / "chestxray14"), "model": str(train / "model"),
        "rejections": [{"reason": f"cannot read {tmp_path}/artifacts/phantom/x.png"}]}))
    upload_dir = dry_run(train / "model", tmp_path / "dry", training=str(train), knowledge=str(knowledge),
                         eval_results=[str(eval_dir)])
    staged = {p.name: p.read_text(errors="replace") for p in upload_dir.rglob("*") if p.is_file()}
    assert not [name for name, text in staged.items() if str(tmp_path) in text]
    staged_eval = json.loads(staged["eval-chestxray14.json"])
    assert staged_eval["root"] == "artifacts/phantom/chestxray14" and staged_eval["model"] == "artifacts/train/model"
    assert '"path": "artifacts/harmonize"' in staged["README.md"]


def test_push_refuses_outside_symlinks_and_files_whose_content_lies(model_dir, tmp_path):
    """Issue 19.4: a symlink to a file outside the folder was staged as its copy; a pickle named *.safetensors
    passed the name check."""
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (model_dir / "special_tokens_map.json").symlink_to(secret)
    with pytest.raises(StageError, match="special_tokens_map.json \\(symlink leaves the model folder\\)"):
        dry_run(model_dir, tmp_path / "d1")
    (model_dir / "special_tokens_map.json").unlink()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (model_dir / "sub").symlink_to(outside)
    with pytest.raises(StageError, match="sub \\(symlink to .* leaves the model folder\\)"):
        dry_run(model_dir, tmp_path / "d2")
    (model_dir / "sub").unlink()

    import pickle

    (model_dir / "extra.safetensors").write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    with pytest.raises(StageError, match="extra.safetensors \\(not a valid safetensors file"):
        dry_run(model_dir, tmp_path / "d3")
    (model_dir / "extra.safetensors").unlink()
    (model_dir / "tokenizer_config.json").write_bytes(b"\x80\x04\x95 binary")
    with pytest.raises(StageError, match="tokenizer_config.json \\(not UTF-8 text\\)"):
        dry_run(model_dir, tmp_path / "d4")
    (model_dir / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(StageError, match="tokenizer_config.json \\(not valid JSON"):
        dry_run(model_dir, tmp_path / "d5")
    (model_dir / "tokenizer_config.json").unlink()
    (model_dir / "modeling_extra.py").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(StageError, match="modeling_extra.py \\(not UTF-8 text\\)"):
        dry_run(model_dir, tmp_path / "d6")
    (model_dir / "modeling_extra.py").unlink()
    # A link that stays inside the folder is staged as a plain file with the target's content.
    (model_dir / "special_tokens_map.json").symlink_to(model_dir / "tokenizer.json")
    upload_dir = dry_run(model_dir, tmp_path / "d7")
    staged = upload_dir / "special_tokens_map.json"
    assert not staged.is_symlink() and staged.read_text() == "{}"


def phantom_chain(tmp_path: Path, model_dir: Path, eval_dir: Path) -> Path:
    """phantom -> prepare-data -> train artifacts, as the demo pipeline writes them; returns the train folder."""
    phantom = artifact(tmp_path / "art" / "phantom", "phantom")
    (phantom / "mimic").mkdir()
    prepared = artifact(tmp_path / "art" / "prepare-data", "prepare-data", root=phantom / "mimic")
    knowledge = harmonize_artifact(tmp_path / "art" / "harmonize", "Right apical pneumothorax.")
    model_knowledge(model_dir, "A visceral pleural line at the apex.")
    return train_artifact(tmp_path / "art", model_dir, knowledge, prepared)


def test_phantom_card_says_so_and_uses_phantom_dataset_names(model_dir, eval_dir, tmp_path):
    """Issue 16.16: phantom results were named "chestxray14" in the model-index, with no word of phantom data."""
    train = phantom_chain(tmp_path, model_dir, eval_dir)
    result = json.loads((eval_dir / "results.json").read_text())
    (eval_dir / "results.json").write_text(json.dumps({**result, "phantom": True}))
    upload_dir = dry_run(train / "model", tmp_path / "dry", training=str(train), eval_results=[str(eval_dir)],
                         allow_report_knowledge=False)
    card = ModelCard.load(upload_dir / "README.md")
    entry = card.data.eval_results[0]
    assert entry.dataset_type == "phantom-chestxray14"
    assert entry.dataset_name == "phantom-chestxray14 (synthetic phantom radiographs, not the real dataset)"
    assert "> **Warning: phantom data.**" in card.text
    assert "- Trained on: **phantom radiographs** (`phantom mimic`)" in card.text
    assert "- Evaluated on: `phantom-chestxray14` (test split): **phantom** images" in card.text
    assert "| phantom-chestxray14 | test | 42 |" in card.text
    assert "https://github.com/)" not in card.text and "(https://arxiv.org/abs/2404.03618)" in card.text


def test_real_data_card_names_its_data_without_a_phantom_warning(model_dir, eval_dir, tmp_path):
    root = tmp_path / "mimic-cxr-jpg"
    root.mkdir()
    prepared = artifact(tmp_path / "art" / "prepare-data", "prepare-data", root=root)
    knowledge = harmonize_artifact(tmp_path / "art" / "harmonize", "Right apical pneumothorax.")
    model_knowledge(model_dir, "A visceral pleural line at the apex.")
    train = train_artifact(tmp_path / "art", model_dir, knowledge, prepared)
    upload_dir = dry_run(train / "model", tmp_path / "dry", training=str(train), eval_results=[str(eval_dir)],
                         allow_report_knowledge=False)
    card = ModelCard.load(upload_dir / "README.md")
    assert card.data.eval_results[0].dataset_name == "chestxray14"
    assert "phantom" not in card.text.lower()
    assert "- Trained on: `mimic-cxr-jpg` (real radiographs" in card.text


def test_push_of_a_real_training_run_verifies_its_knowledge(tmp_path):
    """End to end on real artifacts: a harmonize-shaped artifact with a report sentence -> `devide train` (tiny,
    2 steps) -> push. The train manifest's knowledge fingerprint decides which artifact checks the model."""
    from devide.config import StageConfig
    from devide.stage import Stage
    from devide.training.config import TrainConfig
    from devide.training.stage import STAGE as TRAIN
    from knowledge.base import write_knowledge_base
    from tests.devide.training.tiny_data import KNOWLEDGE, build, train_config

    build(tmp_path)

    class KbConfig(StageConfig):
        report_sentence: str

    def write_kb(cfg: KbConfig, ctx) -> dict:
        rows = [(entity, "definition" if aspect == "definition" else "description", aspect, sentence)
                for entity, aspects in KNOWLEDGE.items() for aspect, sentences in aspects.items()
                for sentence in sentences]
        rows.append(("pleural_effusion", "report", "location", cfg.report_sentence))
        write_knowledge_base(ctx.work_dir, [{"entity": e, "source": s, "aspect": a, "sentence": t,
                                             "provenance": "{}", "hash": str(i)}
                                            for i, (e, s, a, t) in enumerate(rows)])
        return {"rows": len(rows)}

    kb_stage = Stage("harmonize", KbConfig, write_kb)
    trained_with = execute_stage(kb_stage, KbConfig(out=tmp_path / "H", report_sentence="Large left effusion.")).out
    other = execute_stage(kb_stage, KbConfig(out=tmp_path / "R", report_sentence="Small right effusion.")).out
    train = execute_stage(TRAIN, load_config(TrainConfig, overrides=train_config(
        tmp_path, tmp_path / "train", knowledge=str(trained_with), max_steps=2)), quiet=True).out
    model = train / "model"
    assert "Large left effusion." in json.loads((model / "knowledge.json").read_text())["pleural_effusion"]

    with pytest.raises(StageError, match="not the knowledge the model was trained with"):
        dry_run(model, tmp_path / "d1", training=str(train), knowledge=str(other), allow_report_knowledge=False)
    with pytest.raises(StageError, match="derived from training reports"):
        dry_run(model, tmp_path / "d2", allow_report_knowledge=False)  # H found through T/manifest.json
    staged = dry_run(model, tmp_path / "d3", training=str(train), knowledge=str(trained_with))
    assert json.loads((staged / "knowledge.json").read_text()) == json.loads((model / "knowledge.json").read_text())


def test_the_models_own_training_record_marks_a_phantom_card(model_dir, tmp_path):
    """`devide train` records training_data in config.json; it travels with the model folder, so the card is
    honest even when no train artifact is at hand. A train manifest whose dataset cannot be found is unknown."""
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "training_data": {
        "dataset": "phantom (synthetic radiographs)", "phantom": True, "split": "train", "images": 64}}))
    card = (dry_run(model_dir, tmp_path / "d1") / "README.md").read_text()
    assert "> **Warning: phantom data.**" in card
    assert "- Trained on: **phantom radiographs** (`phantom (synthetic radiographs)`)" in card

    (model_dir / "config.json").write_text(json.dumps(config))
    knowledge = harmonize_artifact(tmp_path / "kb", "Right apical pneumothorax.")
    model_knowledge(model_dir, "A visceral pleural line at the apex.")
    train = train_artifact(tmp_path, model_dir, knowledge, dataset=knowledge)  # any existing input, then removed
    manifest = json.loads((train / "manifest.json").read_text())
    manifest["inputs"]["dataset"][0]["path"] = str(tmp_path / "gone" / "prepare-data")
    (train / "manifest.json").write_text(json.dumps(manifest))
    card = (dry_run(train / "model", tmp_path / "d2", training=str(train)) / "README.md").read_text()
    assert "- Trained on: `prepare-data` (its origin could not be verified from here" in card
    assert "real radiographs" not in card
