"""Robustness: the text tools that augmenters and attacks share (words, WordNet synonyms, typos) and the
``tessera eval`` attacks that measure how a trained model holds up under perturbation."""
