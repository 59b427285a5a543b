"""Import plugins (Glance's names): image_decompression, image_conversion, inject_image_metadata."""
