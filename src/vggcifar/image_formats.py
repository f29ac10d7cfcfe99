"""The one list of image types every front end accepts (vgg-predict, datasets, the demo,
/v1/predict), free of heavy imports so the command modules can name it before they run.

Pillow is asked to try only these openers, so no other plugin (EPS, which runs Ghostscript; PCX,
SPIDER, IM, DDS, ICNS, JPEG 2000, SGI, TGA, XBM...) ever parses a file. Pillow's JPEG opener also
reads phones' MPO files.
"""

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
ACCEPTED_NAMES = "PNG, JPEG, WebP, BMP, GIF, TIFF"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
