"""Saliency maps (vanilla gradient, integrated gradients, SmoothGrad, leave-one-out, LIME): not built yet."""
