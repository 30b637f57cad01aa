# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read and rewrite a QEMU command line without ever passing it to a shell.

QEMU options take one argument or none; the flags that take none are listed
here, every other option takes one. Option values are QEMU's key=value lists
(``,,`` is a literal comma) or, for ``-object``, JSON.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

# QEMU options that take no argument (qemu-options.hx, x86 system emulator).
FLAG_OPTIONS = frozenset((
    "S", "s", "daemonize", "nodefaults", "no-reboot", "no-shutdown", "nographic", "snapshot",
    "no-user-config", "enable-kvm", "full-screen", "no-hpet", "no-acpi", "no-fd-bootchk", "win2k-hack",
    "rtc-td-hack", "no-quit", "only-migratable", "preconfig", "version", "help", "h", "curses", "portrait",
    "alt-grab", "ctrl-grab", "no-frame", "sdl", "nodefconfig", "semihosting", "xen-attach", "enable-fips",
    "mem-prealloc", "no-kvm", "enable-sync-profile",
))

REDACTED = "********"
# Keys whose value is a secret wherever they appear, and the secret objects
# whose inline `data` is the secret itself.
SECRET_KEYS = frozenset(("password", "passwd", "secret-value"))
SECRET_OBJECT_TYPES = frozenset(("secret", "secret_keyring", "tls-creds-psk"))
BOOLEAN_WORDS = frozenset(("on", "off", "true", "false", "yes", "no"))

SIZE_SUFFIXES = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass
class Option:
    name: str               # without leading dashes
    value: Optional[str]    # None for a flag
    index: int              # position of the option word in argv


def parse_options(argv: Sequence[str]) -> List[Option]:
    """Split argv[1:] into options; a word that is not an option is skipped."""
    options: List[Option] = []
    i = 1
    while i < len(argv):
        word = argv[i]
        if not word.startswith("-") or word == "-":
            i += 1
            continue
        name = word.lstrip("-")
        if name in FLAG_OPTIONS or i + 1 >= len(argv):
            options.append(Option(name, None, i))
            i += 1
        else:
            options.append(Option(name, argv[i + 1], i))
            i += 2
    return options


def split_keyval(text: str, implied_key: Optional[str] = None) -> List[Tuple[str, str]]:
    """``a=b,c=d`` into pairs; a first item without ``=`` gets ``implied_key``."""
    items: List[str] = []
    current = ""
    i = 0
    while i < len(text):
        char = text[i]
        if char == ",":
            if text[i + 1:i + 2] == ",":
                current += ","
                i += 2
                continue
            items.append(current)
            current = ""
        else:
            current += char
        i += 1
    items.append(current)
    pairs: List[Tuple[str, str]] = []
    for position, item in enumerate(items):
        if "=" in item:
            key, value = item.split("=", 1)
            pairs.append((key, value))
        elif position == 0 and implied_key:
            pairs.append((implied_key, item))
        elif item:
            pairs.append((item, "on"))
    return pairs


def join_keyval(pairs: Sequence[Tuple[str, str]], implied_key: Optional[str] = None) -> str:
    parts = []
    for position, (key, value) in enumerate(pairs):
        escaped = value.replace(",", ",,")
        parts.append(escaped if position == 0 and key == implied_key else "%s=%s" % (key, escaped))
    return ",".join(parts)


def parse_object(value: str) -> Dict[str, Any]:
    """An ``-object`` value, in key=value or JSON form, as a dict."""
    if value.lstrip().startswith("{"):
        try:
            loaded = json.loads(value)
        except ValueError:
            return {}
        return dict(loaded) if isinstance(loaded, dict) else {}
    return dict(split_keyval(value, "qom-type"))


def parse_size(text: Any, default_unit: str = "") -> int:
    """QEMU sizes: 64M, 2G, 1024 (``default_unit`` applies without suffix)."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmgtBKMGT]?)[iI]?[bB]?\s*", str(text))
    if not match:
        raise ValueError("not a size: %r" % text)
    suffix = (match.group(2) or default_unit).lower()
    return int(float(match.group(1)) * SIZE_SUFFIXES[suffix])


def is_on(value: Any) -> bool:
    return str(value).lower() in ("on", "true", "yes", "1")


def values_of(argv: Sequence[str], *names: str) -> List[str]:
    return [opt.value for opt in parse_options(argv) if opt.name in names and opt.value is not None]


def has_flag(argv: Sequence[str], name: str) -> bool:
    return any(opt.name == name for opt in parse_options(argv))


# -- identity ---------------------------------------------------------------
def vm_name(argv: Sequence[str]) -> Optional[str]:
    for value in reversed(values_of(argv, "name")):
        name = dict(split_keyval(value, "guest")).get("guest")
        if name:
            return name
    return None


def pidfile(argv: Sequence[str]) -> Optional[str]:
    found = values_of(argv, "pidfile")
    return found[-1] if found else None


# -- QMP endpoints ----------------------------------------------------------
def chardevs_by_id(options: Sequence[Option]) -> Dict[str, Dict[str, str]]:
    """Each ``-chardev`` with an id, as its key=value pairs (the backend under "backend")."""
    chardevs: Dict[str, Dict[str, str]] = {}
    for opt in options:
        if opt.name == "chardev" and opt.value is not None:
            chardev = dict(split_keyval(opt.value, "backend"))
            if "id" in chardev:
                chardevs[chardev["id"]] = chardev
    return chardevs


@dataclass
class QmpEndpoint:
    path: str
    form: str               # "qmp" for -qmp unix:PATH, "chardev" for -chardev + -mon


def qmp_endpoints(argv: Sequence[str]) -> Tuple[List[QmpEndpoint], List[str]]:
    """The unix QMP sockets a QEMU serves, and notes on monitors we cannot use."""
    endpoints: List[QmpEndpoint] = []
    unusable: List[str] = []
    options = parse_options(argv)
    for opt in options:
        if opt.name in ("qmp", "qmp-pretty") and opt.value is not None:
            spec = split_keyval(opt.value, "backend")[0][1]
            if spec.startswith("unix:"):
                endpoints.append(QmpEndpoint(spec[len("unix:"):], "qmp"))
            else:
                unusable.append("-%s %s is not a unix socket" % (opt.name, spec))
    chardevs = chardevs_by_id(options)
    for opt in options:
        if opt.name == "mon" and opt.value is not None:
            mon = dict(split_keyval(opt.value, "chardev"))
            if mon.get("mode", "readline") != "control":
                continue
            target = chardevs.get(mon.get("chardev", ""), {})
            if target.get("backend") == "socket" and target.get("path"):
                endpoints.append(QmpEndpoint(target["path"], "chardev"))
            else:
                unusable.append("-mon chardev=%s is not a unix socket chardev" % mon.get("chardev"))
    return endpoints, unusable


# -- the guest agent ----------------------------------------------------------
GUEST_AGENT_PORT = "org.qemu.guest_agent.0"


@dataclass
class AgentChannel:
    path: Optional[str]      # the unix socket QEMU listens on for the agent's channel, when it does
    problem: Optional[str]   # why the engine cannot reach the agent through it


def device_props(value: str) -> Dict[str, Any]:
    """A ``-device`` value, in key=value or JSON form (libvirt's), as a dict with its driver."""
    if value.lstrip().startswith("{"):
        return parse_object(value)
    return dict(split_keyval(value, "driver"))


def guest_agent_channel(argv: Sequence[str]) -> Optional[AgentChannel]:
    """The agent's channel: the chardev behind ``-device virtserialport,name=org.qemu.guest_agent.0``.

    None when the VM has no such port. QEMU must be the socket's server: the engine connects to it."""
    options = parse_options(argv)
    chardevs = chardevs_by_id(options)
    for opt in options:
        if opt.name != "device" or opt.value is None:
            continue
        device = device_props(opt.value)
        if device.get("driver") != "virtserialport" or device.get("name") != GUEST_AGENT_PORT:
            continue
        target = chardevs.get(str(device.get("chardev", "")))
        if target is None:
            return AgentChannel(None, "its agent port names chardev %r, which the command line does not define"
                                % device.get("chardev"))
        if target.get("backend") != "socket":
            return AgentChannel(None, "its agent chardev %s is a %s, not a unix socket" % (
                target.get("id"), target.get("backend")))
        if not target.get("path"):
            return AgentChannel(None, "its agent chardev %s has no socket path (a file descriptor passed in, as "
                                      "libvirt does, cannot be reopened by the engine)" % target.get("id"))
        if not is_on(target.get("server", "off")):
            return AgentChannel(None, "its agent chardev %s connects out to %s; the engine needs QEMU to listen "
                                      "(server=on,wait=off)" % (target.get("id"), target["path"]))
        return AgentChannel(target["path"], None)
    return None


def passthrough_devices(argv: Sequence[str]) -> List[str]:
    """The VM's vfio-pci devices, by host address (or sysfsdev, or id)."""
    found = []
    for opt in parse_options(argv):
        if opt.name == "device" and opt.value is not None:
            device = device_props(opt.value)
            if device.get("driver") == "vfio-pci":
                found.append(str(device.get("host") or device.get("sysfsdev") or device.get("id") or "vfio-pci"))
    return found


# -- RAM backends -----------------------------------------------------------
@dataclass
class RamBackend:
    id: str
    type: str
    size: Optional[int] = None
    mem_path: Optional[str] = None
    share: bool = False
    offset: int = 0
    options: Dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        return {"id": self.id, "type": self.type, "size": self.size, "mem_path": self.mem_path,
                "share": self.share, "offset": self.offset}


def ram_backends(argv: Sequence[str]) -> List[RamBackend]:
    """Every memory backend object, plus the implicit main RAM when no backend holds it."""
    backends: List[RamBackend] = []
    for value in values_of(argv, "object"):
        obj = parse_object(value)
        qom_type = str(obj.get("qom-type", ""))
        if not qom_type.startswith("memory-backend-"):
            continue
        size = obj.get("size")
        backends.append(RamBackend(
            id=str(obj.get("id", "")), type=qom_type,
            size=parse_size(size) if size is not None else None,
            mem_path=str(obj["mem-path"]) if obj.get("mem-path") else None,
            # memfd shares by default; file and ram backends do not
            share=is_on(obj.get("share", "on" if qom_type == "memory-backend-memfd" else "off")),
            offset=parse_size(obj.get("offset", 0)),
            options={str(k): str(v) for k, v in obj.items()}))
    main_backend = None
    for value in values_of(argv, "machine", "M"):
        main_backend = dict(split_keyval(value, "type")).get("memory-backend", main_backend)
    numa_memdevs = [dict(split_keyval(v, "type")).get("memdev") for v in values_of(argv, "numa")]
    if main_backend is None and not any(numa_memdevs):
        sizes = values_of(argv, "m")
        size = parse_size(dict(split_keyval(sizes[-1], "size")).get("size", "128"), "m") if sizes else 128 << 20
        legacy_path = values_of(argv, "mem-path")
        backends.append(RamBackend(
            id="pc.ram", type="memory-backend-file" if legacy_path else "memory-backend-ram",
            size=size, mem_path=legacy_path[-1] if legacy_path else None, share=False))
    return backends


# -- secrets ----------------------------------------------------------------
def _redact_pairs(pairs: List[Tuple[str, str]], secret_object: bool) -> Tuple[List[Tuple[str, str]], List[str]]:
    found: List[str] = []
    out: List[Tuple[str, str]] = []
    for key, value in pairs:
        if (key in SECRET_KEYS and value.lower() not in BOOLEAN_WORDS) or (secret_object and key == "data"):
            found.append(value)
            out.append((key, REDACTED))
        else:
            out.append((key, value))
    return out, found


def _redact_value(option: str, value: str) -> Tuple[str, List[str]]:
    if option == "object" and value.lstrip().startswith("{"):
        obj = parse_object(value)
        secret_object = str(obj.get("qom-type")) in SECRET_OBJECT_TYPES
        found = []
        for key in list(obj):
            if (key in SECRET_KEYS and str(obj[key]).lower() not in BOOLEAN_WORDS) or (secret_object and key == "data"):
                found.append(str(obj[key]))
                obj[key] = REDACTED
        return (json.dumps(obj) if found else value), found
    implied = "qom-type" if option == "object" else None
    pairs = split_keyval(value, implied)
    secret_object = option == "object" and dict(pairs).get("qom-type") in SECRET_OBJECT_TYPES
    redacted, found = _redact_pairs(pairs, secret_object)
    return (join_keyval(redacted, implied) if found else value), found


def secret_values(argv: Sequence[str]) -> List[str]:
    """The secret strings on a command line, for the module boundary to hide from all output."""
    found: List[str] = []
    for opt in parse_options(argv):
        if opt.value is not None:
            found.extend(_redact_value(opt.name, opt.value)[1])
    return [value for value in found if value]


def redact(argv: Sequence[str]) -> List[str]:
    """argv with every secret replaced, safe to return and log."""
    out = list(argv)
    for opt in parse_options(argv):
        if opt.value is not None:
            out[opt.index + 1] = _redact_value(opt.name, opt.value)[0]
    return out


# -- rewriting for the restart ----------------------------------------------
def without_incoming(argv: Sequence[str]) -> List[str]:
    """argv minus any ``-incoming X``: a restored VM carries ours from last time."""
    drop: Set[int] = set()
    for opt in parse_options(argv):
        if opt.name == "incoming":
            drop.update((opt.index, opt.index + 1))
    return [word for i, word in enumerate(argv) if i not in drop]


def with_incoming_defer(argv: Sequence[str]) -> List[str]:
    return without_incoming(argv) + ["-incoming", "defer"]


def machine_type(argv: Sequence[str]) -> Optional[str]:
    found = None
    for value in values_of(argv, "machine", "M"):
        found = dict(split_keyval(value, "type")).get("type", found)
    return found


def pin_machine_type(argv: Sequence[str], resolved: str) -> List[str]:
    """Name the versioned machine type the VM runs instead of an alias or the default.

    After a QEMU upgrade, ``q35`` means a newer machine whose device state
    would not match the saved one; ``pc-q35-10.0`` keeps meaning the same.
    """
    out = list(argv)
    last = None
    for opt in parse_options(argv):
        if opt.name in ("machine", "M") and opt.value is not None and "type" in dict(split_keyval(opt.value, "type")):
            last = opt
    if last is None or last.value is None:
        return [out[0], "-machine", resolved] + out[1:]
    pairs = [(k, resolved if k == "type" else v) for k, v in split_keyval(last.value, "type")]
    out[last.index + 1] = join_keyval(pairs, "type")
    return out


# -- what a restart needs of its host ---------------------------------------
PATH_KEYS = {"drive": ("file",), "blockdev": ("filename",), "chardev": ("path",)}
PATH_OPTIONS = ("kernel", "initrd", "bios")


def host_resources(argv: Sequence[str], cwd: str = "/") -> List[Tuple[str, str]]:
    """What QEMU will open on the host and that may appear late in a boot: ("path", file) and ("interface", bridge).

    Images and firmware (-drive file=, -blockdev filename=, -kernel...), sockets QEMU connects to as a client
    (-chardev socket,path= without server=on: vhost-user, swtpm), and the bridges a -netdev bridge or tap
    helper joins. Paths QEMU creates itself (its own server sockets, a tap it makes) are left out."""
    found: List[Tuple[str, str]] = []

    def add_path(path: str) -> None:
        if path and ":" not in path.split("/", 1)[0]:  # not a protocol (nbd:, iscsi:, https:)
            found.append(("path", os.path.normpath(os.path.join(cwd, path))))

    for option in parse_options(argv):
        if option.value is None:
            continue
        if option.name in PATH_OPTIONS:
            add_path(option.value)
            continue
        pairs = dict(parse_object(option.value) if option.name == "blockdev" else
                     split_keyval(option.value, "backend" if option.name in ("chardev", "netdev", "nic") else None))
        if option.name == "chardev" and (pairs.get("backend") != "socket" or is_on(pairs.get("server", "off"))):
            continue
        nested = pairs.get("file")  # a JSON -blockdev's protocol node
        for key in PATH_KEYS.get(option.name, ()):
            for where in (pairs, nested if isinstance(nested, dict) else {}):
                if isinstance(where.get(key), str):
                    add_path(where[key])
        if option.name in ("netdev", "nic") and (pairs.get("backend") == "bridge" or "br" in pairs):
            found.append(("interface", str(pairs.get("br") or "br0")))
    return list(dict.fromkeys(found))
