"""COVIDx CXR: headerless, space-separated label files ``patient_id filename label [data_source]``.

Traps handled: no header; old versions mix 3- and 4-field lines; the label vocabulary differs by version
(``positive``/``negative`` from COVIDx8B on, ``COVID-19``/``normal``/``pneumonia`` before), so both map to the
binary class ``COVID-19``; sources are free text (``rnsa`` typo included), never validated against a list; a
few file names contain spaces (the label token is found from the end). Images: ``test/<filename>``,
``train/<filename>``.

Splits: ``test`` = test.txt (or test_split.txt / test_COVIDx*.txt); ``val`` = val.txt when shipped, else 10 %
of the train.txt patients by sha1.
"""

from __future__ import annotations

from pathlib import Path

from devide.data.adapters import register
from devide.data.adapters.base import DatasetAdapter, EvalRecord, EvalSet, Rejection, hash_split

CLASS = "COVID-19"
POSITIVE = {"positive", "covid-19", "covid19"}
NEGATIVE = {"negative", "normal", "pneumonia"}


def parse_line(line: str) -> tuple[str, str, int, str] | str:
    """-> (patient_id, filename, label, source) or a rejection reason."""
    tokens = line.split()
    index = next((i for i in range(len(tokens) - 1, 1, -1) if tokens[i].lower() in POSITIVE | NEGATIVE), None)
    if len(tokens) < 3 or index is None:
        return f"expected 'patient_id filename label [source]', got {len(tokens)} field(s)"
    if len(tokens) - index > 2:
        return "more than one field after the label"
    label = int(tokens[index].lower() in POSITIVE)
    source = tokens[index + 1] if index + 1 < len(tokens) else ""
    return tokens[0], " ".join(tokens[1:index]), label, source


@register("covidx-cxr", "covidx-cxr2")
class COVIDx(DatasetAdapter):
    name = "covidx"
    title = "COVIDx CXR"
    vocab_key = "covidx"
    classes = [CLASS]

    def read(self, split: str, eval_set: EvalSet) -> None:
        if split == "test":
            label_file = self._first("test.txt", "test_split.txt", "test_COVIDx*.txt")
            eval_set.notes.append(f"split: {label_file.name}")
            keep = None
        elif (self.root / "val.txt").is_file():
            label_file, keep = self.root / "val.txt", None
            eval_set.notes.append("split: val.txt")
        else:
            label_file, keep = self._first("train.txt", "train_split.txt", "train_COVIDx*.txt"), "val"
            eval_set.notes.append(f"split: 10 % of {label_file.name} patients (sha1)")
        image_dir = self.root / ("test" if split == "test" else "train")
        source = self.rel(label_file)
        for line_no, line in enumerate(label_file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            parsed = parse_line(line)
            if isinstance(parsed, str):
                eval_set.rejections.append(Rejection(source, f"line {line_no}", parsed))
                continue
            patient, filename, label, _ = parsed
            if keep is not None and hash_split(patient) != keep:
                continue
            path = image_dir / filename
            if not path.is_file():
                eval_set.rejections.append(Rejection(source, f"line {line_no} ({filename})",
                                                     f"image not found in {image_dir.name}/"))
                continue
            eval_set.records.append(EvalRecord(image_id=filename, path=path, labels={CLASS: label},
                                               patient_id=patient))

    def _first(self, *patterns: str) -> Path:
        for pattern in patterns:
            found = sorted(self.root.glob(pattern))
            if found:
                return found[-1]
        return self.require(*patterns)
