"""Attacks (HotFlip, Input Reduction, universal triggers): not built yet."""
