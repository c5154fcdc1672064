"""Tools around the study: used by the command line, scripts and tests, never by the method or
the study layer.

- ``bench``: speed and memory table on the current device (``python -m gas_lib bench``)
- ``download``: fetch MPDD for ``run_all.sh`` (``python -m gas_lib.tools.download``)
- ``synthetic``: a tiny MPDD-layout dataset drawn on the fly, for tests and demos
- ``surrogates``: grayscale tile and tall textured-surface categories shaped like issue 9's hidden
  sets (``python -m gas_lib.tools.surrogates ROOT``)

Nothing is imported here; import the module you need (``from gas_lib.tools.synthetic import
make_synthetic_category``).
"""
