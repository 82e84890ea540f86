"""histosynth: does class-conditional synthetic histopathology help a classifier?"""

__version__ = "0.1.0"
