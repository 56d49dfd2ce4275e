"""xraysr, the one import package this distribution installs.

The repository keeps the design's two halves as top-level folders (service/, training/) and the shipped model in
engines/; pyproject.toml maps them into this package (setuptools' package-dir), so that what `pip install` puts in
site-packages is xraysr.service, xraysr.training and xraysr/engines/, never modules with names as generic as
`service` or `training`. Run from a checkout, the code is the installed package's: `make test` and `make serve`
install it (strict editable) first.
"""

_API = ("load", "Upscaler", "Upscaled")


def __getattr__(name: str) -> object:
    """``xraysr.load()`` and its types (service/python_api.py), imported on first use: `import xraysr` stays free."""
    if name in _API:
        from xraysr.service import python_api

        return getattr(python_api, name)
    raise AttributeError(f"module 'xraysr' has no attribute {name!r}")
