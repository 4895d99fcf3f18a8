"""Real sounds for tests: ``abt_eval.sounds`` (espeak-ng, sox, fluidsynth + fluid-soundfont-gm), re-exported.

CI installs those programs (``.ci/run``); when one is missing the helpers raise ``RuntimeError`` with the
apt-get line, on purpose: a test that needs real audio should fail, not skip.
"""

from abt_eval.sounds import *  # noqa: F403
from abt_eval.sounds import __all__  # noqa: F401
