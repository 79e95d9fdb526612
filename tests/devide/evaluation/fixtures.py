"""Tiny hand-written fixtures in the exact on-disk formats of the external evaluation datasets.

Every writer takes a root folder and returns what a test needs to check the adapter (ids, expected labels).
Images are ≤ 64 px; boxes and RLE masks are consistent with the written image sizes.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_png(path: Path, size: int = 32, bits: int = 8, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    if bits == 16:
        array = rng.integers(1000, 60000, (size, size), dtype=np.uint16)
        Image.fromarray(array).save(path)  # uint16 -> "I;16"
    else:
        array = np.clip(rng.normal(value, 30, (size, size)), 0, 255).astype(np.uint8)
        Image.fromarray(array).save(path)
    return path


def write_jpg(path: Path, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), 120, np.uint8)).save(path, quality=90)
    return path


def write_dicom(path: Path, size: int = 32, photometric: str = "MONOCHROME2", bits: int = 8,
                sex: str | None = None, age: str | None = None) -> Path:
    """A minimal valid DICOM (explicit VR little endian) with a gradient image."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    if sex:
        ds.PatientSex = sex
    if age:
        ds.PatientAge = age
    dtype = np.uint8 if bits == 8 else np.uint16
    top = 255 if bits == 8 else 4095
    array = np.tile(np.linspace(0, top, size).astype(dtype), (size, 1))
    ds.Rows, ds.Columns = size, size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = array.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- datasets


def chestxray14(root: Path) -> None:
    """5 test images (one missing on disk, one with an unknown label), 3 train/val images, a BBox file."""
    rows = [
        ("00000001_000.png", "Cardiomegaly|Effusion", 1, 1, "058Y", "M"),
        ("00000002_000.png", "No Finding", 0, 2, "34", "F"),
        ("00000003_000.png", "Pleural_Thickening", 0, 3, "71", "F"),
        ("00000004_000.png", "Infiltration|Madeup", 0, 4, "50", "M"),
        ("00000005_000.png", "Mass", 0, 5, "45", "M"),  # listed, but the PNG is missing
        ("00000006_000.png", "Hernia", 0, 6, "61", "F"),
    ] + [(f"000001{i:02d}_000.png", "No Finding", 0, 100 + i, "40", "M") for i in range(30)]
    header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n")
    body = "".join(f"{n},{lab},{fu},{pid},{age},{sex},PA,32,32,0.14,0.14\n" for n, lab, fu, pid, age, sex in rows)
    write_text(root / "Data_Entry_2017_v2020.csv", header + body)
    write_text(root / "test_list.txt", "\n".join(r[0] for r in rows[:5]) + "\n")
    write_text(root / "train_val_list.txt", "\n".join(r[0] for r in rows[5:]) + "\n")
    for name, *_ in rows:
        if name != "00000005_000.png":
            write_png(root / "images_001" / "images" / name)
    write_text(root / "BBox_List_2017.csv",
               "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
               "00000001_000.png,Cardiomegaly,8.0,10.0,12.0,8.5\n"
               "00000004_000.png,Infiltrate,2,3,4,5\n"
               "00000003_000.png,Effusion,5,5,-1,4\n")


def chexpert(root: Path) -> None:
    """valid.csv with the -small release prefix; CheXlocalize test_labels.csv with 'Airspace Opacity'."""
    classes = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
               "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
               "Fracture", "Support Devices"]
    header = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(classes) + "\n"
    valid = []
    for i in range(3):
        rel = f"CheXpert-v1.0-small/valid/patient6454{i}/study1/view1_frontal.jpg"
        write_jpg(root / rel)
        values = ["1.0" if k == i + 2 else "0.0" for k in range(14)]
        valid.append(f"{rel},{'Female' if i % 2 else 'Male'},{60 + i},Frontal,PA," + ",".join(values))
    write_text(root / "CheXpert-v1.0-small" / "valid.csv", header + "\n".join(valid) + "\n")
    test_classes = [("Airspace Opacity" if c == "Lung Opacity" else c) for c in classes]
    # Column order differs from valid.csv: select by name.
    order = test_classes[::-1]
    lines = ["Path," + ",".join(order)]
    for i in range(4):
        rel = f"test/patient6474{i}/study1/view1_frontal.jpg"
        if i != 3:
            write_jpg(root / "CheXpert" / rel)
        values = {c: ("1" if c in ("Edema", "Airspace Opacity") and i % 2 else "0") for c in test_classes}
        lines.append(rel + "," + ",".join(values[c] for c in order))
    write_text(root / "CheXpert" / "test_labels.csv", "\n".join(lines) + "\n")


def padchest(root: Path, gz: bool = True) -> None:
    cols = ["ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
            "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric", "MethodLabel", "Labels",
            "Localizations"]
    rows = [
        ("img1.png", "0", "20140512", "s1", "p1", "1950.0", "M", "POSTEROANTERIOR", "PA", "Manual", "No",
         "Physician", "['pleural effusion', ' cardiomegaly']", "['loc basal']"),
        ("img2.png", "0", "20150101", "s2", "p2", "1980.0", "F", "PA", "PA", "Manual", "No",
         "Physician", "['normal']", "[]"),
        ("img3.png", "1", "20150101", "s3", "p3", "1970.0", "F", "LL", "L", "Manual", "No",
         "Physician", "['nodule']", "[]"),
        ("img4.png", "1", "20150101", "s4", "p4", "1970.0", "F", "PA", "PA", "Manual", "No",
         "Physician", "['exclude']", "[]"),
        ("img5.png", "1", "20150101", "s5", "p5", "", "F", "PA", "PA", "Manual", "No",
         "Physician", "nan", "[]"),
        ("img6.png", "1", "20150101", "s6", "p6", "1960.0", "M", "AP", "AP_horizontal", "Manual", "No",
         "Physician", "['pneumonia', '', 'unchanged', ' nodule ']", "[]"),
        ("img7.png", "1", "20150101", "s7", "p7", "1960.0", "M", "AP", "AP", "Manual", "No",
         "RNN_model", "['emphysema']", "[]"),
    ]
    text = "," + ",".join(cols) + "\n" + "".join(
        f"{i}," + ",".join(f'"{v}"' if "," in v or "'" in v else v for v in row) + "\n" for i, row in enumerate(rows))
    name = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
    if gz:
        root.mkdir(parents=True, exist_ok=True)
        with gzip.open(root / (name + ".gz"), "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        write_text(root / name, text)
    for row in rows:
        write_png(root / row[1] / row[0], bits=16)


def rsna(root: Path) -> list[str]:
    """4 patients: one with two boxes (two rows), one negative, one with an inconsistent Target, one missing."""
    write_text(root / "stage_2_train_labels.csv",
               "patientId,x,y,width,height,Target\n"
               "pa,2.0,3.0,10.0,12.0,1\n"
               "pa,18.0,4.0,8.0,9.0,1\n"
               "pb,,,,,0\n"
               "pc,1.0,1.0,5.0,5.0,1\n"
               "pc,,,,,0\n"
               "pd,,,,,0\n")
    write_text(root / "stage_2_detailed_class_info.csv",
               "patientId,class\npa,Lung Opacity\npa,Lung Opacity\npb,Normal\npc,Lung Opacity\npd,Normal\n")
    for pid in ("pa", "pb", "pc"):
        write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", sex="F" if pid == "pa" else "M", age="061Y")
    return ["pa", "pb", "pc", "pd"]


def siim(root: Path, size: int = 16) -> dict[str, np.ndarray]:
    """Three DICOMs: one with two lesion rows, one '-1', one with a bad RLE; one row without a DICOM."""
    from devide.data.adapters.siim import rle_encode

    first, second = np.zeros((size, size), bool), np.zeros((size, size), bool)
    first[2:5, 3:6] = True
    second[10:12, 1:3] = True
    rows = [("1.2.3.1", " " + rle_encode(first)), ("1.2.3.1", " " + rle_encode(second)), ("1.2.3.2", " -1"),
            ("1.2.3.3", " 5 3 x"), ("1.2.3.9", " -1")]
    write_text(root / "train-rle.csv", "ImageId, EncodedPixels\n" + "".join(f"{i},{r}\n" for i, r in rows))
    for uid in ("1.2.3.1", "1.2.3.2", "1.2.3.3"):
        write_dicom(root / "dicom-images-train" / f"study{uid}" / f"series{uid}" / f"{uid}.dcm", size=size,
                    sex="M", age="045Y")
    return {"1.2.3.1": first | second}


def covidx(root: Path) -> None:
    write_text(root / "test.txt",
               "419639-003251 MIDRC-RICORD-1C-419639-003251-46647-0.png positive ricord\n"
               "p2 img two.png negative rnsa\n"
               "p3 old.jpg COVID-19\n"
               "p4 missing.png negative bimcv\n"
               "garbage\n")
    for name in ("MIDRC-RICORD-1C-419639-003251-46647-0.png", "img two.png", "old.jpg"):
        write_png(root / "test" / name)
    write_text(root / "train.txt", "".join(f"t{i} tr{i}.png negative cohen\n" for i in range(40)))
    for i in range(40):
        write_png(root / "train" / f"tr{i}.png")


def vindr(root: Path) -> None:
    from devide.data.adapters.vindr import GLOBAL, LOCAL

    classes = LOCAL + GLOBAL
    def row(image: str, positives: set[str], reader: str | None = None) -> str:
        head = f"{image},{reader}," if reader else f"{image},"
        return head + ",".join("1" if c in positives else "0" for c in classes)
    write_text(root / "annotations" / "image_labels_test.csv",
               "image_id," + ",".join(classes) + "\n" + row("a" * 32, {"Cardiomegaly", "Aortic enlargement"}) + "\n"
               + row("b" * 32, {"No finding"}) + "\n")
    write_text(root / "annotations" / "annotations_test.csv",
               "image_id,rad_id,class_name,x_min,y_min,x_max,y_max\n"
               f"{'a' * 32},R8,Cardiomegaly,5.0,10.0,25.0,20.0\n"
               f"{'a' * 32},R8,Aortic enlargement,14.0,4.0,18.0,9.0\n"
               f"{'b' * 32},R8,No finding,,,,\n")
    train_ids = [f"{i:032x}" for i in range(60)]
    lines = ["image_id,rad_ID," + ",".join(classes)]
    for image in train_ids:
        lines += [row(image, {"Nodule/Mass"}, "R1"), row(image, {"Nodule/Mass"}, "R2"), row(image, set(), "R3")]
        write_dicom(root / "train" / f"{image}.dicom", photometric="MONOCHROME1", bits=12)
    write_text(root / "annotations" / "image_labels_train.csv", "\n".join(lines) + "\n")
    write_dicom(root / "test" / f"{'a' * 32}.dicom", photometric="MONOCHROME1", bits=12, sex="F", age="061Y")
    write_dicom(root / "test" / f"{'b' * 32}.dicom")


def ms_cxr(root: Path) -> None:
    rel1 = "files/p10/p10000001/s50000001/aaaaaaaa-bbbbbbbb-cccccccc-dddddddd-eeeeeeee.jpg"
    rel2 = "files/p10/p10000002/s50000002/11111111-bbbbbbbb-cccccccc-dddddddd-eeeeeeee.jpg"
    write_jpg(root / "mimic-cxr-jpg" / rel1, size=32)
    write_jpg(root / "mimic-cxr-jpg" / rel2, size=32)
    d1, d2 = rel1.rsplit("/", 1)[1][:-4], rel2.rsplit("/", 1)[1][:-4]
    write_text(root / "MS_CXR_Local_Alignment_v1.1.0.csv",
               "dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height,split\n"
               f"{d1},Pneumonia,right lower lobe pneumonia,{rel1},100,200,300,400,2000,2500,test\n"
               f"{d1},Pneumonia,right lower lobe pneumonia,{rel1},1000,200,300,400,2000,2500,test\n"
               f"{d1},Cardiomegaly,enlarged heart,{rel1},600,1200,800,700,2000,2500,test\n"
               f"{d2},Edema,mild edema,{rel2},100,100,50,50,3000,3000,train\n"
               f"{d2},Edema,mild edema,{rel2},2990,100,50,50,3000,3000,test\n")


def chestx_det10(root: Path) -> None:
    items = [
        {"file_name": "36302.png", "syms": ["Mass", "Nodule"], "boxes": [[1, 2, 10, 12], [20, 20, 25, 26]]},
        {"file_name": "00000071_008.png", "syms": [], "boxes": []},  # NIH name: found among NIH images
        {"file_name": "36303.png", "syms": ["Effusion"], "boxes": [[1, 2, 3]]},
        {"file_name": "36304.png", "syms": ["Fracture", "Fracture"], "boxes": [[1, 2, 5, 6], [1, 1, 2, 2]]},
    ]
    write_text(root / "test.json", json.dumps(items))
    for name in ("36302.png", "36303.png", "36304.png"):
        write_png(root / "test_data" / name)
    write_png(root / "images_003" / "images" / "00000071_008.png")
