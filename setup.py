"""The optional C decoder and encoders (protobuf, JSON) of OTLP trace requests and the normalisation's
per-entry step; everything else is in pyproject.toml.

Optional: without a C compiler or Python's headers the build skips them and the pure-Python
decoder (pipeline/pdata/otlp_arrow.py), encoder (pipeline/pdata/arrow_otlp.py) and numpy
(pipeline/pdata/normalize.py) do the work.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            f"agent_sre.pipeline.pdata.{name}",
            [f"pipeline/pdata/{name}.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
        for name in ("_otlp_decode", "_otlp_encode", "_otlp_json", "_normalize")
    ]
)
