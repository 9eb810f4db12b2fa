"""Unstructured sparsity: masks, layer-wise budgets, saliency scores, schedules, methods."""
