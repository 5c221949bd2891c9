# cffi_modules is a setup() keyword with no pyproject.toml spelling: everything else is in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["python/ggml_tq/_build_cffi.py:ffibuilder"])
