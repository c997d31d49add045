"""Names of the files the plugin writes next to nnU-Net's own (one place, imported by writers and readers)."""

#: few-shot training cases of a fold, in the fold's output folder (``hooks/few_shot.py``)
FEWSHOT_RECORD_NAME = "fewshot_cases.json"
#: origin of every case of a pseudo-labelled raw dataset (``pseudolabel.py``)
MANIFEST_NAME = "pseudolabel_manifest.json"
#: true labels of the demo's unlabelled training cases, kept out of nnU-Net's sight (``demo_data.py``)
HIDDEN_LABELS_DIR = "labelsHidden"
