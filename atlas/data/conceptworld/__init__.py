"""Concept World: procedurally generated images and captions with planted concepts and a planted bias."""

from .world import CONCEPT_NAMES, CONCEPTS, FONTS, KINDS, ConceptWorldSource, Item, World, WorldConfig

__all__ = ["CONCEPTS", "CONCEPT_NAMES", "ConceptWorldSource", "FONTS", "KINDS", "Item", "World", "WorldConfig"]
