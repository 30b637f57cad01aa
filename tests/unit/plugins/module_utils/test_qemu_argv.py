"""Command-line reading and rewriting, on argv shapes operators really use."""

from __future__ import annotations

from ansible_collections.liveupdate.cpr.plugins.module_utils import qemu_argv as qa

ARGV = ["/usr/bin/qemu-system-x86_64", "-name", "guest=web1,debug-threads=on", "-S", "-machine", "q35,accel=tcg",
        "-m", "2G", "-object", "memory-backend-file,id=ram0,size=2G,mem-path=/dev/dax0.0,share=on,offset=1G,align=2M",
        "-machine", "memory-backend=ram0", "-chardev", "socket,id=mon0,path=/run/qemu/web1.qmp,server=on,wait=off",
        "-mon", "chardev=mon0,mode=control", "-object", "secret,id=sec0,data=s3cr3t,,with-comma",
        "-drive", "file=/var/lib/img,,weird.qcow2,if=virtio", "-daemonize", "-incoming", "defer"]


def test_options_know_flags_from_options_with_values():
    names = [(opt.name, opt.value) for opt in qa.parse_options(ARGV)]
    assert ("S", None) in names and ("daemonize", None) in names
    assert ("m", "2G") in names


def test_keyval_with_escaped_comma_round_trips():
    pairs = qa.split_keyval("file=/var/lib/img,,weird.qcow2,if=virtio")
    assert pairs == [("file", "/var/lib/img,weird.qcow2"), ("if", "virtio")]
    assert qa.join_keyval(pairs) == "file=/var/lib/img,,weird.qcow2,if=virtio"


def test_name_and_qmp_in_chardev_form():
    assert qa.vm_name(ARGV) == "web1"
    endpoints, problems = qa.qmp_endpoints(ARGV)
    assert [(e.path, e.form) for e in endpoints] == [("/run/qemu/web1.qmp", "chardev")]
    assert problems == []


def test_qmp_in_short_form_and_tcp_refused():
    argv = ["qemu", "-qmp", "unix:/run/q.sock,server=on,wait=off", "-qmp", "tcp:127.0.0.1:4444,server"]
    endpoints, problems = qa.qmp_endpoints(argv)
    assert [(e.path, e.form) for e in endpoints] == [("/run/q.sock", "qmp")]
    assert "not a unix socket" in problems[0]


def test_hmp_monitor_is_not_qmp():
    argv = ["qemu", "-chardev", "socket,id=h,path=/run/h.sock,server=on", "-mon", "chardev=h"]
    assert qa.qmp_endpoints(argv)[0] == []


def test_ram_backends_file_json_and_implicit():
    backend = qa.ram_backends(ARGV)[0]
    assert (backend.type, backend.mem_path, backend.share, backend.size, backend.offset) == (
        "memory-backend-file", "/dev/dax0.0", True, 2 << 30, 1 << 30)
    json_form = ["qemu", "-object", '{"qom-type": "memory-backend-memfd", "id": "m", "size": 1073741824}',
                 "-numa", "node,memdev=m"]
    memfd = qa.ram_backends(json_form)
    assert [(b.type, b.share, b.size) for b in memfd] == [("memory-backend-memfd", True, 1 << 30)]
    implicit = qa.ram_backends(["qemu", "-m", "512"])
    assert [(b.id, b.type, b.size) for b in implicit] == [("pc.ram", "memory-backend-ram", 512 << 20)]
    legacy = qa.ram_backends(["qemu", "-m", "1G", "-mem-path", "/dev/hugepages"])
    assert (legacy[0].type, legacy[0].share) == ("memory-backend-file", False)


def test_secrets_are_redacted_and_listed():
    redacted = qa.redact(ARGV)
    assert "secret,id=sec0,data=********" in redacted
    assert "s3cr3t,with-comma" in qa.secret_values(ARGV)
    assert not hasattr(qa, "KNOWN_SECRETS"), "secrets travel with the result, not in a module global"
    assert all("s3cr3t" not in word for word in redacted)
    spice = qa.redact(["qemu", "-spice", "port=5900,password=hunter2", "-vnc", ":1,password=on"])
    assert spice[2] == "port=5900,password=********" and spice[4] == ":1,password=on"
    json_secret = qa.redact(["qemu", "-object", '{"qom-type": "secret", "id": "s", "data": "topsecret"}'])
    assert "topsecret" not in json_secret[2]


def test_restart_argv_pins_machine_and_has_one_incoming():
    pinned = qa.pin_machine_type(qa.without_incoming(ARGV), "pc-q35-10.0")
    assert "pc-q35-10.0,accel=tcg" in pinned and "q35,accel=tcg" not in pinned
    restart = qa.with_incoming_defer(pinned)
    assert restart.count("-incoming") == 1 and restart[-2:] == ["-incoming", "defer"]
    default = qa.pin_machine_type(["qemu", "-machine", "accel=tcg", "-m", "1G"], "pc-i440fx-10.0")
    assert default[:3] == ["qemu", "-machine", "pc-i440fx-10.0"]
    typed = qa.pin_machine_type(["qemu", "-M", "type=pc,accel=tcg"], "pc-i440fx-10.0")
    assert typed[2] == "pc-i440fx-10.0,accel=tcg"


def test_sizes():
    assert qa.parse_size("64M") == 64 << 20
    assert qa.parse_size("2", "m") == 2 << 20
    assert qa.parse_size("1.5G") == 3 << 29
