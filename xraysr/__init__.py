"""xraysr, the one import package this distribution installs.

The repository keeps the design's two halves as top-level folders (service/, training/) and the shipped model in
engines/; this package links them (symlinks) so that what `pip install` puts in site-packages is xraysr.service,
xraysr.training and xraysr/engines/, never modules with names as generic as `service` or `training`.
"""
