"""`hear-abt embed`'s malloc settings (hear_abt.allocator): what is set, and when the user's settings win."""

from __future__ import annotations

import ctypes
import platform
import subprocess
import sys

import pytest

from hear_abt import allocator


class FakeLibc:
    """A C library whose ``mallopt`` records its calls (a ctypes function takes argtypes/restype)."""

    def __init__(self, result: int = 1):
        self.calls: list[tuple[int, int]] = []
        self.result = result
        libc = self

        class Mallopt:
            def __call__(self, param: int, value: int) -> int:
                libc.calls.append((param, value))
                return libc.result

        self.mallopt = Mallopt()


@pytest.fixture
def fake_libc(monkeypatch):
    libc = FakeLibc()
    opened = []

    def cdll(name):
        opened.append(name)
        return libc

    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", cdll)
    for name in allocator.USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    libc.opened = opened
    return libc


def test_both_thresholds_are_fixed(fake_libc):
    assert allocator.keep_freed_memory() is True
    assert fake_libc.opened == ["libc.so.6"]
    assert fake_libc.calls == [(-3, 32 * 2**20), (-1, 256 * 2**20)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD


@pytest.mark.parametrize("name", allocator.USER_SETTINGS)
def test_the_users_own_malloc_settings_win(fake_libc, monkeypatch, name):
    monkeypatch.setenv(name, "glibc.malloc.trim_threshold=0" if name == "GLIBC_TUNABLES" else "0")
    assert allocator.keep_freed_memory() is False
    assert fake_libc.calls == []


def test_a_refused_setting_is_reported(fake_libc):
    fake_libc.result = 0  # mallopt returns 0 when it rejects a value
    assert allocator.keep_freed_memory() is False


def test_nothing_happens_off_linux_or_without_glibc(fake_libc, monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False
    assert fake_libc.calls == []
    monkeypatch.setattr(allocator.sys, "platform", "linux")

    def no_libc(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert allocator.keep_freed_memory() is False


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="needs glibc"
)
def test_real_glibc_accepts_the_settings():
    code = "from hear_abt.allocator import keep_freed_memory as k; print(k())"
    env = {k: v for k, v in __import__("os").environ.items() if k not in allocator.USER_SETTINGS}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "True"
