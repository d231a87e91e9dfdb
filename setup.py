"""The optional C decoder of OTLP trace requests; everything else is in pyproject.toml.

Optional: without a C compiler or Python's headers the build skips it and the pure-Python
decoder (pipeline/pdata/otlp_arrow.py) does the work.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "agent_sre.pipeline.pdata._otlp_decode",
            ["pipeline/pdata/_otlp_decode.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
