"""The suite's modalities (EEG, fMRI, ultrasound); their models, datasets and objectives are listed in
:mod:`foundation.registry` and imported on first use. Modalities never import each other."""
