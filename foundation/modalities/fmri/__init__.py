"""SLIM-Brain (fMRI): nibabel readers, cached preprocessing, saliency windows, Hiera4D, JEPA.

Importing this package is cheap: nibabel, nilearn and scipy are imported inside
the functions that need them.
"""
