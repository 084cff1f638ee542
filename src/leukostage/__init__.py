"""leukostage: research decision support for blood smear images (ALL subtype classification).

Not a diagnosis. See README.md.
"""

__version__ = "0.1.0"
