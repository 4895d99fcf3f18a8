"""Run heareval 2021.1.3's runners on a modern stack (torch >= 2.6, pytorch-lightning 1.6-1.9).

    python -m abt_eval.heareval_compat embeddings  MODULE --tasks-dir TASKS [--model PATH] [...]
    python -m abt_eval.heareval_compat predictions EMBEDDINGS/MODULE/TASK [--grid faster] [...]

Everything after the mode goes unchanged to ``heareval.embeddings.runner`` or
``heareval.predictions.runner`` (run as ``python -m`` would), after the fixes listed in
``docs/evaluation.md`` ("heareval on a modern stack"); each fix is applied only where it is needed and
prints one line on stderr saying so.
"""

from __future__ import annotations

import os
import runpy
import sys

RUNNERS = {
    "embeddings": "heareval.embeddings.runner",
    "predictions": "heareval.predictions.runner",
}


def _say(msg: str) -> None:
    print(f"[heareval_compat] {msg}", file=sys.stderr, flush=True)


def patch_torch_load() -> None:
    """heareval ``torch.load``s its own Lightning checkpoints, which hold more than tensors (torch >= 2.6
    refuses that by default)."""
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    _say("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1")


def patch_fit_loop_current_epoch() -> bool:
    """Give ``FitLoop.current_epoch`` a setter again (pytorch-lightning >= 1.6). True if patched."""
    try:
        from pytorch_lightning.loops.fit_loop import FitLoop
    except ImportError:  # pytorch-lightning 2 moved it; heareval does not run there anyway
        return False
    existing = getattr(FitLoop, "current_epoch", None)
    if isinstance(existing, property) and existing.fset is not None:
        return False  # 1.5 and older: nothing to do

    def _get(self) -> int:
        return self.epoch_progress.current.completed

    def _set(self, value: int) -> None:
        self.epoch_progress.current.completed = value

    FitLoop.current_epoch = property(_get, _set, doc="current epoch (settable, as in pytorch-lightning 1.5)")
    import pytorch_lightning

    _say(f"FitLoop.current_epoch setter restored (pytorch-lightning {pytorch_lightning.__version__})")
    return True


def patch_tf_gpu_check() -> bool:
    """Let the embeddings runner start on a GPU machine with tensorflow-cpu. True if patched."""
    if os.environ.get("HEARCOMPAT_TF_GPU_CHECK", "0") == "1":
        return False
    import torch

    if not torch.cuda.is_available():
        return False
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return False
    tf.test.is_gpu_available = lambda *args, **kwargs: True
    _say("torch sees a GPU, TensorFlow does not: skipping heareval's TF GPU check (torch models only)")
    return True


def patch_gpu_device_name() -> bool:
    """Make heareval's GPU name lookup work with nvidia-ml-py returning ``str``. True if patched."""
    import torch

    if not torch.cuda.is_available():
        return False
    import pynvml
    from heareval import gpu_max_mem

    def device_name(device_index: int = 0) -> str:
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(device_index))
        return name.decode("utf-8") if isinstance(name, bytes) else str(name)

    gpu_max_mem.device_name = device_name
    _say("heareval.gpu_max_mem.device_name accepts str names")
    return True


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in RUNNERS:
        sys.exit(f"usage: python -m abt_eval.heareval_compat {{{'|'.join(RUNNERS)}}} ARGS...\n\n{__doc__}")
    mode, args = argv[0], argv[1:]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if mode == "predictions":
        patch_torch_load()
        patch_fit_loop_current_epoch()
    else:
        patch_tf_gpu_check()
    patch_gpu_device_name()
    module = RUNNERS[mode]
    sys.argv = [module] + args
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
