"""Pure loss math: typed functions of tensors that return tensors. No ``self``, no logging."""
