"""Real sounds for tests: ``abt_eval.sounds`` (espeak-ng, sox, fluidsynth + fluid-soundfont-gm), re-exported.

Only the tests of the sound generators themselves (the dev suite, the corpus) need those programs;
they carry :func:`needs_sound_programs`, which skips them with the apt-get line when one is missing.
CI installs the programs (``.ci/run``), so there they run. Tests that need data rather than speech or
music use ``tests/signals.py`` (numpy alone).
"""

import pytest

from abt_eval.sounds import *  # noqa: F403
from abt_eval.sounds import (
    __all__,  # noqa: F401
    missing_packages,
)


def needs_sound_programs(*files: str) -> pytest.MarkDecorator:
    """Skip unless espeak-ng, sox, fluidsynth, the GM soundfont (and ``files``) are installed."""
    missing = missing_packages(*files)
    return pytest.mark.skipif(
        bool(missing), reason=f"needs apt-get install {' '.join(missing)} (sound generators)"
    )
