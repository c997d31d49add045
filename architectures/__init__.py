"""Network classes selectable from nnU-Net plans (``network_class_name``)."""
