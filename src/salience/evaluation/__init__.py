"""Checking saliency maps: faithfulness, sanity checks, agreement between methods."""
