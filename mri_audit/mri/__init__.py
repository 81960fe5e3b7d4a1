"""MRI physics: centred FFTs, masks, the sampling operator, image-quality metrics."""
