"""OneCard's composition root: the `onecard` console script and the demo that starts every part."""
