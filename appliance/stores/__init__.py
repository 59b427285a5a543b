"""Image stores: each owns the bytes of the images it holds."""
