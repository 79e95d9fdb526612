"""Each evaluation adapter on a tiny fixture in its dataset's exact format, including the known traps."""

from __future__ import annotations

import numpy as np
import pytest

from devide.data.adapters import AdapterError, adapter_names, get_adapter
from devide.data.adapters.base import dicom_demographics, parse_age
from devide.data.adapters.covidx import parse_line
from devide.data.adapters.padchest import parse_label_list
from devide.data.adapters.siim import rle_decode, rle_encode
from devide.data.image_io import load_image
from tests.devide.evaluation import fixtures


def reasons(eval_set) -> dict[str, str]:
    return {r.item: r.reason for r in eval_set.rejections}


def test_registry_lists_every_dataset_and_aliases():
    assert adapter_names() == ["chestx-det10", "chestxray14", "chexpert", "covidx", "ms-cxr", "padchest", "rsna",
                               "siim", "vindr"]
    assert get_adapter("NIH").name == "chestxray14"
    with pytest.raises(AdapterError, match="unknown dataset 'mimic'"):
        get_adapter("mimic")


def test_missing_root_and_unknown_split_are_one_line_errors(tmp_path):
    with pytest.raises(AdapterError, match="dataset root not found"):
        get_adapter("rsna")(tmp_path / "nope")
    with pytest.raises(AdapterError, match="unknown split 'train'"):
        get_adapter("rsna")(tmp_path).load("train")
    with pytest.raises(AdapterError, match="stage_2_train_labels.csv"):
        get_adapter("rsna")(tmp_path).load("test")


def test_chestxray14_labels_boxes_rejections(tmp_path):
    fixtures.chestxray14(tmp_path)
    test = get_adapter("chestxray14")(tmp_path).load("test")
    by_id = {r.image_id: r for r in test.records}
    assert sorted(by_id) == ["00000001_000.png", "00000002_000.png", "00000003_000.png"]
    assert by_id["00000001_000.png"].labels["Cardiomegaly"] == 1
    assert by_id["00000001_000.png"].labels["Effusion"] == 1
    assert by_id["00000001_000.png"].labels["Mass"] == 0
    assert set(by_id["00000002_000.png"].labels.values()) == {0}
    assert by_id["00000003_000.png"].labels["Pleural_Thickening"] == 1
    # BBox: x,y,w,h -> corners; "Infiltrate" belongs to a rejected row's image; a negative width is rejected
    assert by_id["00000001_000.png"].boxes == {"Cardiomegaly": [(8.0, 10.0, 20.0, 18.5)]}
    assert by_id["00000001_000.png"].age == 58 and by_id["00000001_000.png"].sex == "M"
    got = reasons(test)
    assert "unknown finding label(s) Madeup" in got["line 5 (00000004_000.png)"]
    assert "image file not found" in got["00000005_000.png"]
    assert any("bad box row" in r for r in got.values())
    # every test-list image is either evaluated or rejected with a reason
    assert len(test.records) + sum("line" in k or k.endswith(".png") for k in got if "BBox" not in k) >= 5
    val = get_adapter("chestxray14")(tmp_path).load("val")
    assert 0 < len(val) < 31 and not {r.image_id for r in val.records} & set(by_id)


def test_chestxray14_infiltrate_box_is_renamed(tmp_path):
    fixtures.chestxray14(tmp_path)
    (tmp_path / "Data_Entry_2017_v2020.csv").write_text(
        (tmp_path / "Data_Entry_2017_v2020.csv").read_text().replace("Infiltration|Madeup", "Infiltration"))
    test = get_adapter("chestxray14")(tmp_path).load("test")
    record = next(r for r in test.records if r.image_id == "00000004_000.png")
    assert record.boxes == {"Infiltration": [(2.0, 3.0, 6.0, 8.0)]}


def test_chexpert_valid_and_test_layouts(tmp_path):
    fixtures.chexpert(tmp_path)
    adapter = get_adapter("chexpert")(tmp_path)
    val = adapter.load("val")
    assert len(val) == 3 and val.records[0].path.is_file()
    assert val.records[0].labels["Cardiomegaly"] == 1 and val.records[0].sex == "M" and val.records[0].age == 60
    test = adapter.load("test")
    assert len(test) == 3 and "image file not found" in test.rejections[0].reason
    assert "Lung Opacity" in test.classes  # 'Airspace Opacity' renamed
    positive = [r for r in test.records if r.labels["Edema"] == 1]
    assert len(positive) == 1 and positive[0].labels["Lung Opacity"] == 1
    assert test.label_sets["competition"] == ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                                              "Pleural Effusion"]


def test_chexpert_study_level_groundtruth(tmp_path):
    fixtures.chexpert(tmp_path)
    classes = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
               "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
               "Fracture", "Support Devices"]
    (tmp_path / "CheXpert" / "test_labels.csv").unlink()
    fixtures.write_jpg(tmp_path / "CheXpert-v1.0/test/patient64741/study1/view1_frontal.jpg")
    fixtures.write_jpg(tmp_path / "CheXpert-v1.0/test/patient64741/study1/view2_lateral.jpg")
    fixtures.write_text(tmp_path / "groundtruth.csv", "Study," + ",".join(classes) + "\n"
                        "CheXpert-v1.0/test/patient64741/study1," + ",".join("1" if c == "Edema" else "0"
                                                                               for c in classes) + "\n"
                        "CheXpert-v1.0/test/patient99999/study1," + ",".join("0" for _ in classes) + "\n")
    test = get_adapter("chexpert")(tmp_path).load("test")
    assert [r.path.name for r in test.records] == ["view1_frontal.jpg"]
    assert test.records[0].labels["Edema"] == 1
    assert "no frontal image" in test.rejections[0].reason


def test_padchest_label_lists_16bit_and_split(tmp_path):
    fixtures.padchest(tmp_path)
    test = get_adapter("padchest")(tmp_path).load("test")
    ids = {r.image_id: r for r in test.records}
    assert sorted(ids) == ["img1.png", "img2.png", "img6.png"]
    assert test.classes == ["cardiomegaly", "nodule", "normal", "pleural effusion", "pneumonia"]
    assert ids["img1.png"].labels["cardiomegaly"] == 1 and ids["img1.png"].labels["normal"] == 0
    assert ids["img6.png"].labels == {"cardiomegaly": 0, "nodule": 1, "normal": 0, "pleural effusion": 0,
                                      "pneumonia": 1}
    assert ids["img1.png"].age == 64 and ids["img1.png"].sex == "M"
    got = " | ".join(r.reason for r in test.rejections)
    assert "non-frontal projection L" in got and "exclude" in got and "unparseable Labels" in got
    image = load_image(ids["img1.png"].path)  # 16-bit PNG windowed to 8-bit "L"
    assert image.mode == "L"
    assert parse_label_list("[' a ', 'b', 'a']") == ["a", "b"] and parse_label_list("nan") is None


def test_rsna_groups_box_rows_and_reports_inconsistency(tmp_path):
    fixtures.rsna(tmp_path)
    adapter = get_adapter("rsna")(tmp_path)
    records = {r.image_id: r for s in ("test", "val") for r in adapter.load(s).records}
    assert set(records) == {"pa", "pb"}
    assert records["pa"].labels == {"Pneumonia": 1}
    assert records["pa"].boxes["Pneumonia"] == [(2.0, 3.0, 12.0, 15.0), (18.0, 4.0, 26.0, 13.0)]
    assert records["pb"].labels == {"Pneumonia": 0} and not records["pb"].boxes
    got = " | ".join(r.reason for s in ("test", "val") for r in adapter.load(s).rejections)
    assert "inconsistent Target" in got and "image not found" in got
    assert dicom_demographics(records["pa"].path) == ("F", 61.0)


def test_rsna_medklip_split_file(tmp_path):
    fixtures.write_dicom(tmp_path / "mdai/1.2/1.3/1.4.dcm")
    fixtures.write_text(tmp_path / "test.csv", "ID,img_path,boxes,classes\n"
                        "x1,mdai/1.2/1.3/1.4.dcm,197.0;291.0;289.0;454.0|683.0;265.0;247.0;524.0,1\n")
    test = get_adapter("rsna")(tmp_path).load("test")
    assert test.records[0].boxes["Pneumonia"][1] == (683.0, 265.0, 930.0, 789.0)


def test_siim_rle_is_relative_column_major_and_unioned(tmp_path):
    expected = fixtures.siim(tmp_path)
    adapter = get_adapter("siim")(tmp_path)
    sets = [adapter.load(s) for s in ("test", "val")]
    records = {r.image_id: r for s in sets for r in s.records}
    assert set(records) == {"1.2.3.1", "1.2.3.2"}
    assert records["1.2.3.1"].labels == {"Pneumothorax": 1} and records["1.2.3.2"].labels == {"Pneumothorax": 0}
    np.testing.assert_array_equal(records["1.2.3.1"].mask_fn((16, 16))["Pneumothorax"], expected["1.2.3.1"])
    got = " | ".join(r.reason for s in sets for r in s.rejections)
    assert "bad RLE" in got and "no DICOM" in got


def test_rle_decode_by_hand():
    # 4x3 image (width 4, height 3), column-major: flat index = x * height + y.
    # "1 2 3 1": skip 1, set 2 (flat 1,2), skip 3, set 1 (flat 6) -> (x0,y1), (x0,y2), (x2,y0)
    mask = rle_decode("1 2 3 1", width=4, height=3)
    expected = np.zeros((3, 4), bool)
    expected[1, 0] = expected[2, 0] = expected[0, 2] = True
    np.testing.assert_array_equal(mask, expected)
    assert rle_encode(expected) == "1 2 3 1"
    assert not rle_decode(" -1", 4, 3).any()
    with pytest.raises(ValueError, match="past"):
        rle_decode("10 5", 4, 3)


def test_covidx_headerless_mixed_fields(tmp_path):
    fixtures.covidx(tmp_path)
    test = get_adapter("covidx")(tmp_path).load("test")
    labels = {r.image_id: r.labels["COVID-19"] for r in test.records}
    assert labels == {"MIDRC-RICORD-1C-419639-003251-46647-0.png": 1, "img two.png": 0, "old.jpg": 1}
    got = reasons(test)
    assert "image not found" in got["line 4 (missing.png)"] and "field" in got["line 5"]
    assert parse_line("a b.png pneumonia") == ("a", "b.png", 0, "")
    val = get_adapter("covidx")(tmp_path).load("val")
    assert 0 < len(val) < 40


def test_vindr_dicom_extension_monochrome1_and_readers(tmp_path):
    fixtures.vindr(tmp_path)
    adapter = get_adapter("vindr")(tmp_path)
    test = adapter.load("test")
    record = {r.image_id: r for r in test.records}["a" * 32]
    assert record.path.suffix == ".dicom"
    assert record.labels["Cardiomegaly"] == 1 and record.labels["No finding"] == 0
    assert record.boxes["Cardiomegaly"] == [(5.0, 10.0, 25.0, 20.0)]
    assert dicom_demographics(record.path) == ("F", 61.0)
    val = adapter.load("val")
    assert val.records and all(r.labels["Nodule/Mass"] == 1 for r in val.records)  # 2 of 3 readers
    image = np.asarray(load_image(val.records[0].path))
    assert image[0, 0] > image[0, -1]  # MONOCHROME1 inverted: the low-value column is bright


def test_ms_cxr_groups_boxes_into_phrases_with_original_frame(tmp_path):
    fixtures.ms_cxr(tmp_path)
    test = get_adapter("ms-cxr")(tmp_path).load("test")
    by_id = {r.image_id: r for r in test.records}
    first = by_id["aaaaaaaa-bbbbbbbb-cccccccc-dddddddd-eeeeeeee"]
    assert first.frame_size == (2000, 2500)
    assert first.labels == {"Pneumonia": 1, "Cardiomegaly": 1}
    assert [(c, t, len(b)) for c, t, b in first.phrases] == [("Pneumonia", "right lower lobe pneumonia", 2),
                                                             ("Cardiomegaly", "enlarged heart", 1)]
    assert "outside" in test.rejections[0].reason  # the box past the 3000 px frame


def test_chestx_det10_corner_boxes_and_nih_names(tmp_path):
    fixtures.chestx_det10(tmp_path)
    test = get_adapter("chestx-det10")(tmp_path).load("test")
    by_id = {r.image_id: r for r in test.records}
    assert set(by_id) == {"36302.png", "00000071_008.png", "36304.png"}
    assert by_id["36302.png"].boxes == {"Mass": [(1.0, 2.0, 10.0, 12.0)], "Nodule": [(20.0, 20.0, 25.0, 26.0)]}
    assert by_id["36304.png"].boxes["Fracture"] == [(1.0, 2.0, 5.0, 6.0), (1.0, 1.0, 2.0, 2.0)]
    assert sum(by_id["00000071_008.png"].labels.values()) == 0
    assert "not 4 numbers" in test.rejections[0].reason or "x1,y1,x2,y2" in test.rejections[0].reason


def test_parse_age_formats():
    assert parse_age("058Y") == 58 and parse_age("006M") == 0.5 and parse_age("") is None and parse_age("x") is None


# ---------------------------------------------------------------------------------------------- real-file robustness


def rename_column(path, old: str, new: str = "renamed") -> None:
    """Rename one header cell of a CSV (exact cell match, surrounding spaces ignored)."""
    header, _, body = path.read_text(encoding="utf-8").partition("\n")
    cells = header.split(",")
    assert any(c.strip() == old.strip() for c in cells), f"{old!r} not in {header!r}"
    path.write_text(",".join(new if c.strip() == old.strip() else c for c in cells) + "\n" + body, encoding="utf-8")


SCHEMA_CASES = [  # (dataset, fixture, label file, split, column): each used to raise KeyError or change results
    ("rsna", fixtures.rsna, "stage_2_train_labels.csv", "test", "Target"),
    ("rsna", fixtures.rsna, "stage_2_train_labels.csv", "test", "patientId"),
    ("rsna", fixtures.rsna, "stage_2_train_labels.csv", "test", "width"),
    ("siim", fixtures.siim, "train-rle.csv", "test", "ImageId"),
    ("siim", fixtures.siim, "train-rle.csv", "test", "EncodedPixels"),
    ("vindr", fixtures.vindr, "annotations/image_labels_test.csv", "test", "image_id"),
    ("vindr", fixtures.vindr, "annotations/image_labels_test.csv", "test", "Cardiomegaly"),
    ("vindr", fixtures.vindr, "annotations/annotations_test.csv", "test", "class_name"),
    ("chestxray14", fixtures.chestxray14, "Data_Entry_2017_v2020.csv", "test", "Patient Gender"),
    ("chestxray14", fixtures.chestxray14, "Data_Entry_2017_v2020.csv", "val", "Patient ID"),
    ("chexpert", fixtures.chexpert, "CheXpert-v1.0-small/valid.csv", "val", "Edema"),
    ("chexpert", fixtures.chexpert, "CheXpert-v1.0-small/valid.csv", "val", "Sex"),
    ("padchest", lambda root: fixtures.padchest(root, gz=False),
     "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", "test", "MethodLabel"),
    ("padchest", lambda root: fixtures.padchest(root, gz=False),
     "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", "test", "Projection"),
]


@pytest.mark.parametrize(("dataset", "make", "label_file", "split", "column"), SCHEMA_CASES,
                         ids=[f"{c[0]}-{c[4]}" for c in SCHEMA_CASES])
def test_a_missing_column_is_one_line_naming_it(tmp_path, dataset, make, label_file, split, column):
    make(tmp_path)
    get_adapter(dataset)(tmp_path).load(split)  # the intact fixture loads
    rename_column(tmp_path / label_file, column)
    with pytest.raises(AdapterError) as info:
        get_adapter(dataset)(tmp_path).load(split)
    message = str(info.value)
    assert "\n" not in message and f"lacks column(s) {column}" in message and "renamed" in message


def write_vinbigdata(root) -> list[str]:
    """Kaggle VinBigData train.csv: 3 readers per image, boxes per reader, 'No finding' rows without boxes."""
    ids = [f"{i:032x}" for i in range(30)]
    lines = ["image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"]
    for n, image in enumerate(ids):
        if n % 2:  # two of three readers see cardiomegaly; one of three an effusion (minority)
            lines += [f"{image},Cardiomegaly,3,R9,5.0,10.0,25.0,20.0", f"{image},Cardiomegaly,3,R10,6.0,11.0,24.0,21.0",
                      f"{image},Pleural effusion,10,R11,1.0,1.0,4.0,4.0"]
        else:
            lines += [f"{image},No finding,14,R{r},,,," for r in (9, 10, 11)]
        fixtures.write_dicom(root / "train" / f"{image}.dicom")
    fixtures.write_text(root / "train.csv", "\n".join(lines) + "\n")
    return ids


def test_vindr_kaggle_vinbigdata_layout(tmp_path):
    ids = write_vinbigdata(tmp_path)
    adapter = get_adapter("vinbigdata")(tmp_path)
    test, val = adapter.load("test"), adapter.load("val")
    assert sorted(r.image_id for r in test.records + val.records) == ids  # every image in exactly one split
    assert val.records and test.records
    record = next(r for r in test.records + val.records if r.image_id == ids[1])
    assert record.labels["Cardiomegaly"] == 1 and record.labels["Pleural effusion"] == 0  # 2/3 vs 1/3
    assert record.labels["No finding"] == 0
    assert record.boxes["Cardiomegaly"] == [(5.0, 10.0, 25.0, 20.0), (6.0, 11.0, 24.0, 21.0)]
    normal = next(r for r in test.records + val.records if r.image_id == ids[0])
    assert normal.labels["No finding"] == 1 and normal.labels["Cardiomegaly"] == 0 and not normal.boxes
    assert test.classes[-1] == "No finding" and len(test.classes) == 15


def test_vindr_without_a_known_label_file_names_the_layouts(tmp_path):
    with pytest.raises(AdapterError, match="Kaggle VinBigData \\(train.csv"):
        get_adapter("vindr")(tmp_path).load("test")


def test_siim_flat_dicom_folder(tmp_path):
    expected = fixtures.siim(tmp_path)
    for path in list((tmp_path / "dicom-images-train").rglob("*.dcm")):  # flatten the release's nesting
        path.rename(tmp_path / "dicom-images-train" / path.name)
    records = {r.image_id: r for s in ("test", "val") for r in get_adapter("siim")(tmp_path).load(s).records}
    assert set(records) == {"1.2.3.1", "1.2.3.2"}
    np.testing.assert_array_equal(records["1.2.3.1"].mask_fn((16, 16))["Pneumothorax"], expected["1.2.3.1"])


def test_siim_without_dicoms_names_the_accepted_layouts(tmp_path):
    fixtures.write_text(tmp_path / "train-rle.csv", "ImageId, EncodedPixels\n1.2.3, -1\n")
    with pytest.raises(AdapterError, match="accepted layouts: dicom-images-train/\\*/\\*/\\*.dcm"):
        get_adapter("siim")(tmp_path).load("test")


def test_padchest_flat_folder_and_classes_from_the_label_table(tmp_path):
    fixtures.padchest(tmp_path)
    for path in list(tmp_path.glob("[0-9]/*.png")):  # one flat folder instead of the zip parts
        path.rename(tmp_path / path.name)
    (tmp_path / "img6.png").unlink()  # the only frontal image with pneumonia is missing
    test = get_adapter("padchest")(tmp_path).load("test")
    assert sorted(r.image_id for r in test.records) == ["img1.png", "img2.png"]
    # pneumonia stays a class (from the label table), evaluated on the images that exist
    assert test.classes == ["cardiomegaly", "nodule", "normal", "pleural effusion", "pneumonia"]
    assert "image not found (looked for <ImageDir>/<ImageID>" in reasons(test)["line 7 (img6.png)"]
