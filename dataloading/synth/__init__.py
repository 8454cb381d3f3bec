"""Demo and test data: synthetic 360° videos with FOA audio and ground truth, and labeled eval sets.

Driven by ``avsa synth``. Real material (CC0 panoramas, recorded sounds, photos) is used where
Debian packages ship it (:mod:`.assets`); procedural stand-ins otherwise. Everything is
deterministic given the seed.
"""
