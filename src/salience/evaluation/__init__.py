"""Checking saliency maps: faithfulness, sanity checks by randomization, agreement between methods."""
