"""Opening (or creating, or linking) a file outside the container root fails however it is spelled.

Success is judged by what the kernel resolved: the probe fstat()s every descriptor it gets, and an
attempt escaped if that inode is one of the outside files, whatever the path string was. The
outside directories are also handed to the member as open descriptors (``ctr_exec -k``), the way a
careless agent could leak them.
"""

from __future__ import annotations

import os

from conftest import Sandbox, parse_json_lines

READ_ATTEMPTS = [
    "../secret",
    "/../../../secret",
    "/tmp/chital-vm/secret",  # the host path, as if there were no chroot
    "/escape_abs",  # symlink with an absolute outside target
    "/escape_rel",  # symlink climbing with ..
    "@FD0@:secret",  # openat from an outside directory descriptor
    "@FD0@:../secret",
    "@FD1@:secret",
    "/proc/self/fd/@FD0@/secret",  # magic link to the outside directory
    "/proc/self/fd/@FD1@/secret",
    "/proc/@PPID@/root/tmp/chital-vm/secret",  # the (non-member) parent's root
    "/proc/1/root/newroot/tmp/chital-vm/secret",  # init's root (the initramfs)
    "/proc/self/root/../secret",
    "/proc/self/cwd/../../secret",
]


def _outside_ids(sandbox: Sandbox) -> set[tuple[int, int]]:
    ids = set()
    for p in (sandbox.secret, sandbox.outside_dir / "secret"):
        st = p.stat()
        ids.add((st.st_dev, st.st_ino))
    return ids


def _escaped(results: list[dict], outside: set[tuple[int, int]]) -> list[str]:
    return [r["name"] for r in results if r["ret"] >= 0 and (r["dev"], r["ino"]) in outside]


def _run(sandbox: Sandbox, argv: list[str], member: bool = True) -> list[dict]:
    proc = sandbox.run_member(argv, member=member, keep=[sandbox.outside_dir, sandbox.base])
    return parse_json_lines(proc.stdout)


def test_member_cannot_open_outside_files(sandbox: Sandbox) -> None:
    results = _run(sandbox, ["/bin/probe", "open", *READ_ATTEMPTS, "/etc/hello", "/inside_link"])
    print({r["name"]: (r["ret"], r["errno"]) for r in results})
    assert len(results) == len(READ_ATTEMPTS) + 2
    assert not _escaped(results, _outside_ids(sandbox)), results
    by_name = {r["name"]: r for r in results}
    assert by_name["/etc/hello"]["ret"] >= 0, "a member must be able to open files in its root"
    assert by_name["/inside_link"]["ret"] >= 0, "symlinks inside the root must work"


def test_control_non_member_does_escape(sandbox: Sandbox) -> None:
    """The same attempts by a chrooted non-member get out (so the test above has teeth)."""
    results = _run(sandbox, ["/bin/probe", "open", *READ_ATTEMPTS], member=False)
    print({r["name"]: (r["ret"], r["errno"]) for r in results})
    escaped = set(_escaped(results, _outside_ids(sandbox)))
    assert {"@FD0@:secret", "@FD1@:secret", "/proc/@PPID@/root/tmp/chital-vm/secret"} <= escaped, results


def test_member_cannot_create_outside(sandbox: Sandbox) -> None:
    attempts = ["@FD0@:created", "@FD1@:outdir/created2", "/tmp/inside-ok"]
    results = _run(sandbox, ["/bin/probe", "create", *attempts])
    by_name = {r["name"]: r for r in results}
    assert by_name["@FD0@:created"]["ret"] < 0
    assert by_name["@FD1@:outdir/created2"]["ret"] < 0
    assert not (sandbox.outside_dir / "created").exists()
    assert not (sandbox.outside_dir / "created2").exists()
    assert by_name["/tmp/inside-ok"]["ret"] >= 0, "creating files inside the root must work"
    os.unlink(sandbox.root / "tmp" / "inside-ok")


def test_member_cannot_hardlink_an_outside_file_in(sandbox: Sandbox) -> None:
    try:
        results = _run(sandbox, ["/bin/probe", "link", "@FD1@:secret", "/stolen"])
        print(results)
        assert not _escaped(results, _outside_ids(sandbox)), results
        assert not (sandbox.root / "stolen").exists()
    finally:
        (sandbox.root / "stolen").unlink(missing_ok=True)
