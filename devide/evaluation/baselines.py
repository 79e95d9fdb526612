"""Published zero-shot numbers of DeViDe's peers, with the protocol behind each (from the project's
reference/baselines.md). DeViDe's own numbers are not public, so none is listed.

Each entry: method, macro AUC (fraction), the class set it averages, optional F1/ACC and their threshold
protocol, and the source. A table is shown next to our result only for the same dataset and class set.
"""

from __future__ import annotations

MAVL_README = "HieuPhan33/MAVL README (MAVL re-evaluation of every method, 224 px)"
MAXF1 = "max-f1-test (MedKLIP/MAVL, optimistic)"

BASELINES: dict[str, list[dict]] = {
    "chexpert": [
        {"method": "MAVL", "auc": 0.9013, "f1": 0.6547, "acc": 0.8644, "class_set": "competition",
         "protocol": MAXF1, "source": MAVL_README},
        {"method": "MedKLIP", "auc": 0.8797, "f1": 0.6367, "acc": 0.8432, "class_set": "competition",
         "protocol": MAXF1, "source": MAVL_README},
        {"method": "CheXzero", "auc": 0.8790, "f1": 0.6190, "acc": 0.8117, "class_set": "competition",
         "protocol": MAXF1, "source": MAVL_README},
        {"method": "KAD", "auc": 0.905, "class_set": "competition",
         "protocol": "macro AUC; F1/ACC at max-MCC-test thresholds (KAD)", "source": "KAD (wizwand listing)"},
    ],
    "chestxray14": [
        {"method": "MAVL", "auc": 0.7357, "f1": 0.2625, "acc": 0.8277, "class_set": "all", "protocol": MAXF1,
         "source": MAVL_README},
        {"method": "MedKLIP", "auc": 0.7233, "f1": 0.2418, "acc": 0.7940, "class_set": "all", "protocol": MAXF1,
         "source": MAVL_README},
        {"method": "CheXzero", "auc": 0.6699, "f1": 0.2199, "acc": 0.6538, "class_set": "all", "protocol": MAXF1,
         "source": MAVL_README},
        {"method": "KAD", "auc": 0.789, "class_set": "all", "protocol": "macro AUC, 512 px (KAD)",
         "source": "KAD (wizwand listing)"},
    ],
    "padchest": [
        {"method": "MAVL", "auc": 0.7879, "f1": 0.2848, "acc": 0.9256, "class_set": "seen-mavl", "protocol": MAXF1,
         "source": MAVL_README},
        {"method": "MedKLIP", "auc": 0.7787, "f1": 0.2663, "acc": 0.9244, "class_set": "seen-mavl",
         "protocol": MAXF1, "source": MAVL_README},
    ],
    "rsna": [
        {"method": "MAVL", "auc": 0.8631, "f1": 0.6526, "acc": 0.8128, "class_set": "all", "protocol": MAXF1,
         "source": MAVL_README + "; MedKLIP split (n=5,337)"},
        {"method": "MedKLIP", "auc": 0.8594, "f1": 0.6257, "acc": 0.7997, "class_set": "all", "protocol": MAXF1,
         "source": MAVL_README},
        {"method": "CheXzero", "auc": 0.8513, "f1": 0.6149, "acc": 0.7834, "class_set": "all", "protocol": MAXF1,
         "source": MAVL_README},
    ],
    "siim": [
        {"method": "MAVL", "auc": 0.9204, "f1": 0.7795, "acc": 0.8714, "class_set": "all", "protocol": MAXF1,
         "source": MAVL_README + "; MedKLIP split (n=2,264)"},
        {"method": "MedKLIP", "auc": 0.8979, "f1": 0.7273, "acc": 0.8399, "class_set": "all", "protocol": MAXF1,
         "source": MAVL_README},
        {"method": "CheXzero", "auc": 0.8460, "f1": 0.6597, "acc": 0.7734, "class_set": "all", "protocol": MAXF1,
         "source": MAVL_README},
    ],
    "covidx": [
        {"method": "MAVL (text head)", "auc": 0.8404, "f1": 0.8173, "acc": 0.7767, "class_set": "all",
         "protocol": MAXF1, "source": "MAVL results CSV result_mavl_covid-cxr2_text.csv (n=2,969)"},
    ],
    "chestx-det10": [
        {"method": "KAD", "auc": 0.735, "class_set": "all", "protocol": "macro AUC (CARZero protocol)",
         "source": "KAD (wizwand listing)"},
    ],
}
NOT_AVAILABLE = "DeViDe (arXiv 2404.03618) publishes no numeric results, so it has no row."


def baselines_for(dataset: str) -> list[dict]:
    return list(BASELINES.get(dataset, []))
