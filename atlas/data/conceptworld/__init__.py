"""Concept World: procedurally generated images and captions with planted concepts and a planted bias."""

from .world import (CONCEPT_NAMES, CONCEPTS, FONTS, HELD_OUT_PICTOGRAMS, KINDS, PICTOGRAM_LABELS, ConceptWorldSource, Item,
                    World, WorldConfig, heldout_pictograms)

__all__ = ["CONCEPTS", "CONCEPT_NAMES", "ConceptWorldSource", "FONTS", "HELD_OUT_PICTOGRAMS", "KINDS", "PICTOGRAM_LABELS",
           "Item", "World", "WorldConfig", "heldout_pictograms"]
