"""LayerCache: layer-wise caching of flow-matching image Transformers (arXiv 2604.16492)."""
