"""onecard."""
