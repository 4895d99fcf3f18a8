"""Where the real suite's recordings come from: Debian packages unpacked without root, and the files in them.

A package is fetched once into ``CACHE/debs`` (``apt-get download``, which needs no root) and unpacked into
``CACHE/pkgs/<package>`` (``dpkg-deb -x``); a marker file written last says the unpacking finished. The
``list_*`` functions pick the files of a task from an unpacked package and derive their labels and groups
(the files of one group always land in one split). See ``docs/realsuite.md``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from xml.etree import ElementTree

import soundfile as sf

from hear_abt.fileio import atomic_write_text

PACKAGE_MARKER = ".realsuite-package.json"
AUDIO_SUFFIXES = (".wav", ".ogg", ".flac", ".aiff", ".aif", ".oga", ".mp3")


class FetchError(RuntimeError):
    """A package could not be fetched or unpacked, or is missing from the cache while fetching is off."""


@dataclass(frozen=True)
class Package:
    name: str
    licence: str
    recorded: str  # what in it is recorded (and what is not), from listening to samples and its docs
    unzip: tuple[str, str] | None = (
        None  # (zip inside the package, member prefix): unpack those, drop the zip
    )


PACKAGES = {
    p.name: p
    for p in [
        Package(
            "tuxpaint-stamps-default", "GPL-2", "spoken stamp names recorded by translators; animal sounds"
        ),
        Package(
            "hydrogen-drumkits",
            "GPL-2+, CC-BY-SA-3.0, CC-BY-3.0, CC0 (per kit)",
            "acoustic kits recorded; ElectricEmpireKit, HardElectro1, VariBreaks are electronic (not used)",
        ),
        Package(
            "0ad-data",
            "CC-BY-SA-3.0",
            "sound effects and ambiences, mostly field/foley recordings (some processed)",
            unzip=("usr/share/games/0ad/mods/public/public.zip", "audio/"),
        ),
        # speech-language's unseen voices (valid and test): Mexican Spanish, Canadian French, Russian
        Package(
            "asterisk-core-sounds-es-wav", "CC-BY-SA-3.0", "telephony prompts, one speaker (es_MX_f_Allison)"
        ),
        Package(
            "asterisk-core-sounds-fr-wav", "CC-BY-SA-3.0", "telephony prompts, one speaker (fr_CA_f_June)"
        ),
        Package(
            "asterisk-core-sounds-ru-wav",
            "CC-BY-SA-3.0",
            "telephony prompts, one speaker (ru_RU_f_IvrvoiceRU)",
        ),
        # The pre-training corpus only: none of these packages is read by a suite task.
        Package(
            "asterisk-core-sounds-it-wav", "CC-BY-SA-3.0", "telephony prompts, one speaker (it_IT_m_Carlo)"
        ),
        Package("hedgewars-data", "GPL-2, CC-BY-SA-3.0", "character voice packs (actors) and game effects"),
        Package("wesnoth-1.16-data", "GPL-2+", "game sound effects (hits, weapons, creatures, ambience)"),
        Package(
            "sonic-pi-samples",
            "CC-BY-SA-4.0 (Debian copyright; Freesound originals)",
            "instrument, drum, ambient and vinyl samples",
        ),
        Package("lmms-common", "GPL-2+, CC-BY-SA-3", "sample library: drums, basses, instruments, effects"),
        Package("hydrogen-drumkits-effects", "GPL-2+", "recorded guitar strums (belofilms_GuitarStrums)"),
    ]
}


@dataclass(frozen=True)
class SourceFile:
    """One recording: ``path`` relative to the root of unpacked ``package``."""

    package: str
    path: str
    label: str
    group: str  # the unit a split holds out: all files of a group go to one split

    @property
    def key(self) -> str:
        return f"{self.package}/{self.path}"

    def absolute(self, cache: Path) -> Path:
        return package_dir(cache, self.package) / self.path

    def record(self, cache: Path) -> dict:
        return {**asdict(self), "sha256": file_sha256(self.absolute(cache))}


# ------------------------------------------------------------------------------------------ fetching


def package_dir(cache: str | Path, name: str) -> Path:
    return Path(cache) / "pkgs" / name


def package_info(cache: str | Path, name: str) -> dict | None:
    """The marker of an unpacked package (name, version, deb file), or None when it is not unpacked."""
    try:
        return json.loads((package_dir(cache, name) / PACKAGE_MARKER).read_text())
    except (OSError, ValueError):
        return None


def mark_unpacked(folder: str | Path, name: str, version: str, deb: str = "") -> None:
    """Write the marker that makes ``folder`` count as unpacked package ``name`` (written last)."""
    info = {"package": name, "version": version, "deb": deb}
    atomic_write_text(Path(folder) / PACKAGE_MARKER, json.dumps(info, indent=1))


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    except FileNotFoundError as err:
        raise FetchError(
            f"{what}: {cmd[0]} is missing; the real suite fetches Debian packages with apt-get and dpkg-deb"
        ) from err
    if r.returncode != 0:
        raise FetchError(f"{what}: {' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-1500:]}")
    return r


def _download(debs: Path, name: str) -> Path:
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{name}_*.deb"))
    if found:
        return found[-1]
    hint = f"cannot fetch Debian package {name} (run `apt-get update` once, as root, and check the network)"
    _run(["apt-get", "download", name], hint, cwd=debs)
    found = sorted(debs.glob(f"{name}_*.deb"))
    if not found:
        raise FetchError(f"{hint}: apt-get download left no {name}_*.deb in {debs}")
    return found[-1]


def _unzip_members(root: Path, zip_rel: str, prefix: str) -> None:
    """Unpack the members under ``prefix`` of the zip at ``root/zip_rel`` into ``root``; drop the zip.

    0ad-data keeps its files in a 3 GB zip; only ``audio/`` (0.3 GB) is wanted."""
    archive = root / zip_rel
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            if info.filename.startswith(prefix) and not info.is_dir() and ".." not in info.filename:
                z.extract(info, root)
    archive.unlink()


def fetch_package(cache: str | Path, name: str, *, fetch: bool = True, log=print) -> Path:
    """The unpacked root of Debian package ``name`` in ``cache``, fetched and unpacked when missing."""
    if name not in PACKAGES:
        raise FetchError(f"unknown package {name!r}; the real suite knows {', '.join(PACKAGES)}")
    target = package_dir(cache, name)
    if package_info(cache, name) is not None:
        return target
    if not fetch:
        raise FetchError(f"package {name} is not unpacked in {Path(cache) / 'pkgs'} and fetching is off")
    log(f"fetching {name} ...")
    deb = _download(Path(cache) / "debs", name)
    version = _run(["dpkg-deb", "-f", str(deb), "Version"], f"cannot read {deb}").stdout.strip()
    partial = target.with_name(name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(partial)], f"cannot unpack {deb}")
    if PACKAGES[name].unzip:
        _unzip_members(partial, *PACKAGES[name].unzip)
    mark_unpacked(partial, name, version, deb.name)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def audio_files(root: str | Path) -> list[Path]:
    """Every audio file under ``root``, sorted (the package marker and docs are not audio)."""
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def has_samples(path: Path) -> bool:
    """Whether libsndfile reads ``path`` and finds samples (asterisk ships a few empty prompts)."""
    try:
        return sf.info(path).frames > 0
    except (sf.LibsndfileError, RuntimeError):
        return False


def task_audio_files(root: str | Path) -> list[Path]:
    """The audio files under ``root`` that a task can use: readable and not empty."""
    return [p for p in audio_files(root) if has_samples(p)]


# ------------------------------------------------------------------------------------------ task sources

TUXPAINT_LANGUAGES = ("be", "bg", "ca", "da", "el", "es", "fr", "ro", "ru")  # those with >= 300 recordings
# Languages that tuxpaint's translators and asterisk's voices share: speech-language trains on the first
# and is evaluated on the second, so that it cannot be solved by recognising the one voice of a language.
SPEECH_LANGUAGES = ("es", "fr", "ru")
_DESC = re.compile(r"^(?P<stamp>.+)_desc_(?P<lang>[a-z]{2,3})$")


def list_spoken_names(cache: Path, languages=TUXPAINT_LANGUAGES) -> list[SourceFile]:
    """tuxpaint-stamps-default's spoken stamp names, labelled by language; grouped by stamp, so that the
    names of one stamp in every language share a split (no word is heard in two splits)."""
    root = package_dir(cache, "tuxpaint-stamps-default")
    out = []
    for p in task_audio_files(root):
        m = _DESC.match(p.stem)
        if m and m["lang"] in languages:
            group = (p.parent.relative_to(root) / m["stamp"]).as_posix()
            out.append(
                SourceFile("tuxpaint-stamps-default", p.relative_to(root).as_posix(), m["lang"], group)
            )
    return out


def list_prompts(cache: Path, languages=SPEECH_LANGUAGES) -> list[SourceFile]:
    """asterisk-core-sounds-<lang>-wav's prompts (one speaker per language), labelled by language; grouped
    by prompt (its path under the voice's folder, the same in every language)."""
    out = []
    for lang in languages:
        package = f"asterisk-core-sounds-{lang}-wav"
        root = package_dir(cache, package)
        for p in task_audio_files(root):
            prompt = Path(*p.relative_to(root).parts[5:]).with_suffix("").as_posix()  # under sounds/<voice>/
            out.append(SourceFile(package, p.relative_to(root).as_posix(), lang, prompt))
    return out


DRUM_CLASSES = [  # (label, pattern on the kit's instrument name), first match wins; cowbell before cymbal
    (
        "hand-percussion",
        r"cowbell|clave|wood ?block|maraca|tambourin|bongo|conga|cajon|djembe|sangban|"
        r"dununba|kenkeni|shaker|waterglass|triangle|guiro|agogo|timbale",
    ),
    ("hihat", r"hi-?hat|\bhh\b|\bhat\b|\bohh\b"),
    ("kick", r"kick|bass ?drum|\bbd\b"),
    ("snare", r"snare"),
    ("rim", r"stick|\brim"),
    ("tom", r"\btom"),
    ("cymbal", r"crash|ride|splash|china|cymbal|\bbell\b"),
    ("clap", r"clap|snap"),
]
ELECTRONIC_KITS = ("ElectricEmpireKit", "HardElectro1", "VariBreaks")  # synthesised: not recordings


def drum_class(instrument: str) -> str | None:
    name = instrument.lower()
    for label, pattern in DRUM_CLASSES:
        if re.search(pattern, name):
            return label
    return None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def kit_instruments(drumkit_xml: Path) -> list[tuple[str, list[str]]]:
    """(instrument name, sample file names) of a Hydrogen ``drumkit.xml`` (any namespace, old or new)."""
    tree = ElementTree.parse(drumkit_xml)
    out = []
    for el in tree.iter():
        if _local(el.tag) != "instrument":
            continue
        name = next((c.text or "" for c in el if _local(c.tag) == "name"), "")
        files = [d.text.strip() for d in el.iter() if _local(d.tag) == "filename" and d.text]
        if files:
            out.append((name.strip(), files))
    return out


def list_drum_samples(cache: Path) -> list[SourceFile]:
    """hydrogen-drumkits' acoustic kits, one file per velocity layer, labelled by drum class from the
    instrument name; grouped by kit piece (all layers of one drum stay in one split)."""
    root = package_dir(cache, "hydrogen-drumkits")
    out = []
    for xml in sorted(root.rglob("drumkit.xml")):
        kit = xml.parent
        if kit.name in ELECTRONIC_KITS:
            continue
        for instrument, files in kit_instruments(xml):
            label = drum_class(instrument)
            for f in files:
                if label and (kit / f).suffix.lower() in AUDIO_SUFFIXES and has_samples(kit / f):
                    rel = (kit / f).relative_to(root).as_posix()
                    out.append(SourceFile("hydrogen-drumkits", rel, label, f"{kit.name}/{instrument}"))
    return sorted(set(out), key=lambda s: s.path)


SFX_CLASSES = [  # (label, pattern on the path under audio/), first match wins
    ("footsteps", r"^actor/singlesteps/"),
    ("animal", r"^actor/fauna/animal/"),
    ("human-death", r"^actor/human/death/"),
    ("arrow-impact", r"^attack/impact/arrow_"),
    ("shield-impact", r"^attack/impact/shield_"),
    ("sling-impact", r"^attack/impact/sling_"),
    ("sword-clash", r"^attack/weapon/swordhit"),
    ("bow-shot", r"^attack/weapon/(bow_attack|arrowfly)"),
    ("melee-swing", r"^attack/weapon/(spear|pike|sword|jav)_attack"),
    ("sling-shot", r"^attack/weapon/sling_"),
    ("fire", r"^attack/fire/"),
    ("construction", r"^resource/construction/"),
    ("gathering", r"^resource/gathering/"),
    ("lumbering", r"^resource/lumbering/"),
    ("mining", r"^resource/mining/"),
]
AMBIENCE = r"^ambient/(dayscape|water|weather|building)/"
# Short, impulsive classes that can be placed as events with clear onsets and offsets.
EVENT_CLASSES = ("footsteps", "sword-clash", "arrow-impact", "shield-impact", "mining", "lumbering")


def _take_group(rel: str) -> str:
    # swordhit_10, swordhit_10a, swordhit_10b are cuts of one take: one group
    return f"{Path(rel).parent.as_posix()}/{re.sub(r'[a-z]$', '', Path(rel).stem)}"


def list_effects(cache: Path) -> list[SourceFile]:
    """0ad-data's sound effects labelled by family (folder and file name); grouped by take."""
    root = package_dir(cache, "0ad-data")
    out = []
    for p in task_audio_files(root / "audio"):
        rel = p.relative_to(root / "audio").as_posix()
        label = next((lab for lab, pat in SFX_CLASSES if re.search(pat, rel)), None)
        if label:
            out.append(SourceFile("0ad-data", f"audio/{rel}", label, _take_group(rel)))
    return out


def list_ambiences(cache: Path) -> list[SourceFile]:
    """0ad-data's ambience loops (day, water, weather, buildings): the events task's backgrounds."""
    root = package_dir(cache, "0ad-data")
    out = []
    for p in task_audio_files(root / "audio"):
        rel = p.relative_to(root / "audio").as_posix()
        if re.search(AMBIENCE, rel):
            out.append(SourceFile("0ad-data", f"audio/{rel}", rel.split("/")[1], rel))
    return out
